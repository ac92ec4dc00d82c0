"""Default configuration. Key names follow the original TOP-ReID / TransReID code so that its YAML files and
command lines keep working; the values that were ``'yes'``/``'no'`` strings or 0/1 integers there are booleans here
(the old spellings are still accepted when merging, see :mod:`configs.config`). Keys of the original that nothing
reads are not here; old configs that set them still load (:mod:`configs.compat`).

Each validated key has its rule on the line after its default: ``RULES[key]`` returns ``None`` for a valid value,
otherwise what is wrong with it (see :mod:`configs.rules`); :func:`configs.config.validate` applies them.
"""

from yacs.config import CfgNode as CN

from configs.rules import Rule, backbone, cross, dataset, device, method, number, one_of, pair, spectra, triple
from utils.spectra import MISS_SETTINGS

_C = CN()
RULES: dict[str, Rule] = {}
# String keys that may also be written as a YAML list of strings; the list is stored joined with ", ".
LIST_STRINGS: set[str] = set()

# ----------------------------------------------------------------------------------------------------------------------
_C.MODEL = CN()
# The method (modeling/methods/): TOPReID, DeMo, ... Each reads the MODEL keys it needs; a checkpoint of one method
# does not load into another.
_C.MODEL.META_ARCHITECTURE = "TOPReID"
RULES["MODEL.META_ARCHITECTURE"] = method
_C.MODEL.DEVICE = "auto"  # auto | cpu | cuda | cuda:N
RULES["MODEL.DEVICE"] = device
# any timm ViT/DeiT name, a timm CLIP tower (vit_base_patch16_clip_quickgelu_224, ...), t2t_vit_t_14, t2t_vit_t_24
_C.MODEL.TRANSFORMER_TYPE = "vit_base_patch16_224"
RULES["MODEL.TRANSFORMER_TYPE"] = backbone
_C.MODEL.PRETRAIN_CHOICE = "imagenet"
RULES["MODEL.PRETRAIN_CHOICE"] = one_of("imagenet", "none")
_C.MODEL.PRETRAIN_PATH_T = ""  # ImageNet weights shared by the three backbones
_C.MODEL.STRIDE_SIZE = [16, 16]
RULES["MODEL.STRIDE_SIZE"] = pair(1, 16)
_C.MODEL.SIE_CAMERA = True
_C.MODEL.SIE_COE = 3.0
RULES["MODEL.SIE_COE"] = number(0.0)
_C.MODEL.DROP_PATH = 0.1
RULES["MODEL.DROP_PATH"] = number(0.0, 1.0, hi_open=True)
_C.MODEL.DROP_OUT = 0.0
RULES["MODEL.DROP_OUT"] = number(0.0, 1.0, hi_open=True)
_C.MODEL.ATT_DROP_RATE = 0.0
RULES["MODEL.ATT_DROP_RATE"] = number(0.0, 1.0, hi_open=True)
# One backbone for every spectrum (their images batched through it together) instead of one per spectrum; TPM, CRM
# and the heads are unchanged. Checkpoints of the original code (one backbone per spectrum) do not load into it.
_C.MODEL.SHARED_BACKBONE = False
_C.MODEL.SPECTRA = ["RGB", "NI", "TI"]  # spectra the model uses (single/dual-spectrum ablations)
RULES["MODEL.SPECTRA"] = spectra
_C.MODEL.BASE = False  # baseline without TPM and CRM
_C.MODEL.RE = True  # Complementary Reconstruction Module
_C.MODEL.RE_LAYER = 1  # transformer blocks per reconstructor
RULES["MODEL.RE_LAYER"] = number(1, integer=True)
_C.MODEL.DIRECT = True  # True: one head on the concatenated CLS tokens; False: one head per spectrum
_C.MODEL.TPM_HEADS = 0  # attention heads of TPM and CRM; 0 = 12, or 8 for T2T backbones (as the original)
RULES["MODEL.TPM_HEADS"] = number(0, integer=True)
# DeMo (MODEL.META_ARCHITECTURE DeMo, modeling/methods/demo.py): ATMoE heads, the test feature (cat[ori, moe], ori or
# moe: the original's return_pattern 3, 1, 2) and HDM's attention dropout (0.1, hard-coded in the original).
_C.MODEL.DEMO = CN()
_C.MODEL.DEMO.HEAD = 4
RULES["MODEL.DEMO.HEAD"] = number(1, integer=True)
_C.MODEL.DEMO.FEATURE = "cat"
RULES["MODEL.DEMO.FEATURE"] = one_of("cat", "ori", "moe")
_C.MODEL.DEMO.HDM_DROPOUT = 0.1
RULES["MODEL.DEMO.HDM_DROPOUT"] = number(0.0, 1.0, hi_open=True)
# The paper's ablation switches (the original's GLOBAL_LOCAL, HDM, ATM): without PIFE f_s is the backbone's token 0;
# without ATMoE the moe feature is the seven HDM parts concatenated; without HDM only the ori head and feature remain.
# ATMOE needs HDM (the original crashes without it).
_C.MODEL.DEMO.PIFE = True
_C.MODEL.DEMO.HDM = True
_C.MODEL.DEMO.ATMOE = True
# EDITOR (MODEL.META_ARCHITECTURE EDITOR, modeling/methods/editor.py). AL: the backbone's supervision, True = one
# head on the concatenated backbone CLS tokens (the original's MODEL.AL 1), False = one head, shared, per spectrum (AL
# 0). HEAD_KEEP: tokens each backbone attention head keeps (k = int(N / num_patches * HEAD_KEEP), so 224x224 gives
# k = 1, as the original); FREQUENCY_KEEP: tokens the frequency score keeps; the weights of the BCC and OCFR losses.
_C.MODEL.EDITOR = CN()
_C.MODEL.EDITOR.AL = True
_C.MODEL.EDITOR.HEAD_KEEP = 2
RULES["MODEL.EDITOR.HEAD_KEEP"] = number(1, integer=True)
_C.MODEL.EDITOR.FREQUENCY_KEEP = 10
RULES["MODEL.EDITOR.FREQUENCY_KEEP"] = number(1, integer=True)
_C.MODEL.EDITOR.BCC_LOSS_WEIGHT = 1.0
RULES["MODEL.EDITOR.BCC_LOSS_WEIGHT"] = number(0.0)
_C.MODEL.EDITOR.OCFR_LOSS_WEIGHT = 1.0
RULES["MODEL.EDITOR.OCFR_LOSS_WEIGHT"] = number(0.0)
_C.MODEL.ID_LOSS_WEIGHT = 1.0
RULES["MODEL.ID_LOSS_WEIGHT"] = number(0.0)
_C.MODEL.TRIPLET_LOSS_WEIGHT = 1.0
RULES["MODEL.TRIPLET_LOSS_WEIGHT"] = number(0.0)
_C.MODEL.CRM_LOSS_WEIGHT = 1.0
RULES["MODEL.CRM_LOSS_WEIGHT"] = number(0.0)
_C.MODEL.IF_LABELSMOOTH = True
_C.MODEL.LABEL_SMOOTH = 0.1
RULES["MODEL.LABEL_SMOOTH"] = number(0.0, 1.0, hi_open=True)
_C.MODEL.NO_MARGIN = True  # soft-margin triplet; False uses SOLVER.MARGIN
_C.MODEL.GRAD_CHECKPOINT = False  # activation checkpointing in the backbones
# torch.compile each transformer block (backbones, TPM, CRM) in place: regional compilation, for training and
# evaluation; compiles in a fraction of the whole model's time and keeps parameter names (see modeling/compile.py).
_C.MODEL.COMPILE = False

# ----------------------------------------------------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.SIZE_TRAIN = [256, 128]  # height, width
RULES["INPUT.SIZE_TRAIN"] = pair(16)
_C.INPUT.SIZE_TEST = [256, 128]
RULES["INPUT.SIZE_TEST"] = pair(16)
_C.INPUT.PROB = 0.5  # horizontal flip
RULES["INPUT.PROB"] = number(0.0, 1.0)
_C.INPUT.RE_PROB = 0.5  # random erasing
RULES["INPUT.RE_PROB"] = number(0.0, 1.0)
_C.INPUT.PIXEL_MEAN = [0.5, 0.5, 0.5]
RULES["INPUT.PIXEL_MEAN"] = triple()
_C.INPUT.PIXEL_STD = [0.5, 0.5, 0.5]
RULES["INPUT.PIXEL_STD"] = triple(positive=True)
_C.INPUT.PADDING = 10
RULES["INPUT.PADDING"] = number(0, integer=True)
_C.INPUT.SHARE_AUG = False  # one set of random augmentation parameters for the three spectra of a sample
# Training batches leave the loader as uint8 after resize, pad and crop; float conversion, normalisation, flip and
# random erasing run in batch on the training device (data/gpu_augment.py). Same distribution, different draws.
_C.INPUT.GPU_AUGMENT = False

# ----------------------------------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.NAMES = "RGBNT201"  # RGBNT201 | RGBNT100 | MSVR310 | RGBNT300 | Market1501-MM | WMVEID863 | demo
RULES["DATASETS.NAMES"] = dataset
_C.DATASETS.ROOT_DIR = "./data"
# For a data set with NI and no TI (RGBNT300): the TI slot holds each sample's NI image (the same tensor, augmentation
# included), the convention of the published RGBNT300 numbers (EDITOR's collate). False: the data set has its two
# spectra, and MODEL.SPECTRA names a subset of them. An error for a data set that has TI.
_C.DATASETS.NI_AS_TI = False

# ----------------------------------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.SAMPLER = "softmax_triplet"  # softmax_triplet (P x K) | softmax (plain shuffle)
RULES["DATALOADER.SAMPLER"] = one_of("softmax_triplet", "softmax")
_C.DATALOADER.NUM_INSTANCE = 16
RULES["DATALOADER.NUM_INSTANCE"] = number(1, integer=True)
# When an epoch of the P x K sampler ends. original: when fewer than P identities have chunks of K images left, as
# the original code (the number of iterations varies per epoch); fixed: always sum_i max(n_i, K) // K // P
# iterations, dealing a new round of chunks when needed. The shipped data-set configs say original (from
# Base-TOP-ReID.yml); the default stays fixed so that configs and runs from before the key keep their batches.
_C.DATALOADER.EPOCH_RULE = "fixed"
RULES["DATALOADER.EPOCH_RULE"] = one_of("original", "fixed")
_C.DATALOADER.NUM_WORKERS = 8
RULES["DATALOADER.NUM_WORKERS"] = number(0, integer=True)
# Decode and resize every training image once, before training, and keep them in memory (uint8 at INPUT.SIZE_TRAIN:
# about 1.2 GB for RGBNT201, 2.6 GB for RGBNT100, 0.3 GB for MSVR310). The batches are the same as without it.
_C.DATALOADER.CACHE_IMAGES = False

# ----------------------------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER_NAME = "SGD"
RULES["SOLVER.OPTIMIZER_NAME"] = one_of("SGD", "Adam", "AdamW")  # Adam: L2 weight decay in the gradient (DeMo)
_C.SOLVER.MAX_EPOCHS = 120
RULES["SOLVER.MAX_EPOCHS"] = number(1, integer=True)
_C.SOLVER.BASE_LR = 0.009
RULES["SOLVER.BASE_LR"] = number(0.0, lo_open=True)
_C.SOLVER.LARGE_FC_LR = False
# Backbone learning rate = BASE_LR x this factor through the whole schedule (warm-up start and floor included); TPM,
# CRM and the heads keep BASE_LR. 1.0 is the original (one rate for everything).
_C.SOLVER.BACKBONE_LR_FACTOR = 1.0
RULES["SOLVER.BACKBONE_LR_FACTOR"] = number(0.0, lo_open=True)
# An absolute backbone learning rate instead of the factor (DeMo's CLIP backbone: 5e-6); 0 = BASE_LR x the factor.
# The backbone is the method's (its backbone_prefix: TOP-ReID's backbones, DeMo's one shared tower).
_C.SOLVER.BACKBONE_LR = 0.0
RULES["SOLVER.BACKBONE_LR"] = number(0.0)
# Backbone biases at the backbone lr x BIAS_LR_FACTOR (True, TOP-ReID) or at the backbone lr itself (False, DeMo).
_C.SOLVER.BIAS_LR_FACTOR_IN_BACKBONE = True
_C.SOLVER.BIAS_LR_FACTOR = 2.0
RULES["SOLVER.BIAS_LR_FACTOR"] = number(0.0, lo_open=True)
_C.SOLVER.MOMENTUM = 0.9
RULES["SOLVER.MOMENTUM"] = number(0.0, 1.0, hi_open=True)
_C.SOLVER.MARGIN = 0.3
RULES["SOLVER.MARGIN"] = number(0.0)
_C.SOLVER.WEIGHT_DECAY = 1e-4
RULES["SOLVER.WEIGHT_DECAY"] = number(0.0)
_C.SOLVER.WEIGHT_DECAY_BIAS = 1e-4
RULES["SOLVER.WEIGHT_DECAY_BIAS"] = number(0.0)
_C.SOLVER.SCHEDULER = "cosine"
RULES["SOLVER.SCHEDULER"] = one_of("cosine", "demo")  # demo: DeMo's noisy cosine (solver/scheduler.py)
_C.SOLVER.WARMUP_ITERS = 10  # warm-up epochs (the original's name)
RULES["SOLVER.WARMUP_ITERS"] = number(0, integer=True)
_C.SOLVER.WARMUP_FACTOR = 0.01
RULES["SOLVER.WARMUP_FACTOR"] = number(0.0, 1.0, lo_open=True)
_C.SOLVER.MIN_LR_FACTOR = 0.001
RULES["SOLVER.MIN_LR_FACTOR"] = number(0.0, 1.0)
_C.SOLVER.SEED = 1111
RULES["SOLVER.SEED"] = number(0, integer=True)
_C.SOLVER.IMS_PER_BATCH = 128
RULES["SOLVER.IMS_PER_BATCH"] = number(1, integer=True)
_C.SOLVER.CHECKPOINT_PERIOD = 10
RULES["SOLVER.CHECKPOINT_PERIOD"] = number(0, integer=True)
_C.SOLVER.LOG_PERIOD = 10
RULES["SOLVER.LOG_PERIOD"] = number(1, integer=True)
_C.SOLVER.EVAL_PERIOD = 1
RULES["SOLVER.EVAL_PERIOD"] = number(0, integer=True)
_C.SOLVER.AMP = True  # mixed precision of training on CUDA (on CPU only with SOLVER.AMP_CPU); evaluation: TEST.AMP
_C.SOLVER.AMP_DTYPE = "bf16"  # bf16 | fp16 (with a grad scaler)
RULES["SOLVER.AMP_DTYPE"] = one_of("bf16", "fp16")
_C.SOLVER.AMP_CPU = False  # autocast on CPU too (for testing the mixed-precision step without a GPU; slow)
_C.SOLVER.GRAD_CLIP = 0.0  # max gradient norm; 0 disables
RULES["SOLVER.GRAD_CLIP"] = number(0.0)
_C.SOLVER.RESUME = False
_C.SOLVER.DETERMINISTIC = False  # torch.use_deterministic_algorithms on GPU (slower)

# ----------------------------------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.IMS_PER_BATCH = 128
RULES["TEST.IMS_PER_BATCH"] = number(1, integer=True)
_C.TEST.RE_RANKING = False
_C.TEST.WEIGHT = ""
_C.TEST.NECK_FEAT = "before"  # before | after the BNNeck
RULES["TEST.NECK_FEAT"] = one_of("before", "after")
_C.TEST.FEAT_NORM = True
_C.TEST.MISS = "nothing"  # nothing | r | n | t | rn | rt | nt | all
RULES["TEST.MISS"] = one_of(*MISS_SETTINGS, "all")
# Cross-spectral evaluation: query features from the query-side spectra only, gallery features from the gallery side
# only (CRM reconstructs the others on each side). "" = off; "all" = every ordered pair of distinct single spectra of
# MODEL.SPECTRA; or pairs QUERY->GALLERY ("RGB->TI, RGB+NI->TI"), comma/space separated or a YAML list.
_C.TEST.CROSS = ""
RULES["TEST.CROSS"] = cross
LIST_STRINGS.add("TEST.CROSS")
_C.TEST.SAVE_FEATURES = False
# Mixed precision (SOLVER.AMP_DTYPE) for test features on CUDA. The original extracts them in fp32 even when it
# trains with AMP, so the default is False; SOLVER.AMP only concerns training.
_C.TEST.AMP = False

# ----------------------------------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./logs/run"
_C.OVERWRITE = False  # allow a new run into an OUTPUT_DIR that already holds one


def get_cfg_defaults() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()
