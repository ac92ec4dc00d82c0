"""Training losses: ID (label-smoothed cross entropy), batch-hard triplet, and their combination over named heads."""

from loss.build import ReIDLoss, build_loss
from loss.triplet import TripletLoss, euclidean_dist, hard_example_mining

__all__ = ["ReIDLoss", "TripletLoss", "euclidean_dist", "hard_example_mining", "build_loss"]
