"""The TOP-ReID meta-architecture: one backbone per spectrum (or one shared by all), TPM, CRM and BNNeck heads."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

import torch
from torch import nn

from layers.bnneck import BNNeckHead
from modeling.crm import ComplementaryReconstruction
from modeling.tpm import TokenPermutation
from utils.spectra import SPECTRA

TrainOutput = dict[str, dict[str, object]]


class SpectrumBackbones(nn.Module):
    """The backbone of each spectrum, read as a mapping (``backbones[s]``, ``items()``, ``in``, iteration in spectrum
    order). Separate modules are stored under their spectrum (state_dict ``backbones.<S>.*``); one module given for
    every spectrum is stored once, as ``backbones.shared.*`` (``is_shared``), so its keys are unambiguous."""

    def __init__(self, backbones: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.spectra: tuple[str, ...] = tuple(backbones)
        distinct = {id(m) for m in backbones.values()}
        self.is_shared = len(self.spectra) > 1 and len(distinct) == 1
        if not self.is_shared and len(distinct) != len(self.spectra):
            raise ValueError("some spectra share a backbone and others do not: give one backbone per spectrum, or "
                             "the same one for all (MODEL.SHARED_BACKBONE)")
        if self.is_shared:
            self.shared = backbones[self.spectra[0]]
        else:
            for spectrum, module in backbones.items():
                self.add_module(spectrum, module)

    def __getitem__(self, spectrum: str) -> nn.Module:
        if spectrum not in self.spectra:
            raise KeyError(spectrum)
        return self.shared if self.is_shared else self._modules[spectrum]

    def __contains__(self, spectrum: object) -> bool:
        return spectrum in self.spectra

    def __iter__(self) -> Iterator[str]:
        return iter(self.spectra)

    def __len__(self) -> int:
        return len(self.spectra)

    def keys(self) -> tuple[str, ...]:
        return self.spectra

    def items(self) -> list[tuple[str, nn.Module]]:
        return [(s, self[s]) for s in self.spectra]

    def values(self) -> list[nn.Module]:
        return [self[s] for s in self.spectra]


class TOPReID(nn.Module):
    """TOP-ReID over the spectra named by the keys of ``backbones`` (in that order).

    - Full model: TPM on the backbone tokens (head ``"tpm"`` on its [B, nD] output), CRM (``use_crm``), and a second
      head: ``direct`` -> ``"concat"`` on the concatenated CLS tokens, otherwise one head per spectrum on its CLS.
    - ``base``: no TPM and no CRM; heads ``"concat"`` or one per spectrum; test feature = the concatenated CLS tokens.
    - The same module given for every spectrum is one shared backbone (:class:`SpectrumBackbones`): the spectra's
      images are concatenated along the batch (in ``spectra`` order), run through it once, and split again.

    Train mode: ``forward(images, cam_label)`` -> ``{"heads": {name: (logits, feature before BNNeck)},
    "losses": {"crm": scalar}}`` ("losses" is empty without CRM). Eval mode: ``forward(images, cam_label, missing)``
    -> test feature [B, feat_dim] (not normalised), the backbone of a missing spectrum is not run. Eval is
    ``features_from_tokens(backbone_tokens(images, cam_label), missing)``, so one backbone pass can serve several
    missing-spectrum settings.

    Missing spectra: with CRM, a missing spectrum's tokens are the mean of its reconstructions from the available
    spectra, then TPM runs as usual. Without CRM (``base`` or ``use_crm=False``) the missing spectrum is left out:
    TPM cycles over the available spectra only, and the missing spectrum's D-wide slot of the test feature is zeros
    (before and after the BNNeck), so features keep their width and the available parts stay comparable.
    """

    backbone_prefix = "backbones."  # parameters with the backbone's learning rate (SOLVER.BACKBONE_LR[_FACTOR])

    def __init__(self, backbones: Mapping[str, nn.Module], num_classes: int, *, base: bool = False,
                 use_crm: bool = True, direct: bool = True, num_heads: int | None = None, crm_depth: int = 1,
                 crm_norm_eps: float = 1e-5, neck_feat: str = "before") -> None:
        super().__init__()
        spectra = tuple(backbones)
        unknown = [s for s in spectra if s not in SPECTRA]
        if not spectra or unknown:
            raise ValueError(f"MODEL.SPECTRA {list(spectra)}: expected one or more of {', '.join(SPECTRA)}")
        if not base and len(spectra) < 2:
            raise ValueError(f"MODEL.SPECTRA {list(spectra)}: TPM and CRM need two or more spectra (or MODEL.BASE)")
        if neck_feat not in ("before", "after"):
            raise ValueError(f"TEST.NECK_FEAT {neck_feat!r} is not one of: before, after")
        dims = {s: int(b.embed_dim) for s, b in backbones.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"backbones of different widths: {dims}")
        self.spectra: tuple[str, ...] = spectra
        self.dim = dims[spectra[0]]
        self.feat_dim = len(spectra) * self.dim
        self.base, self.direct, self.neck_feat = base, direct, neck_feat
        self.backbones = SpectrumBackbones(backbones)
        heads = num_heads or next(iter(backbones.values())).default_heads
        if self.dim % heads:
            raise ValueError(f"backbone width {self.dim} is not divisible by {heads} TPM/CRM heads; set "
                             "MODEL.TPM_HEADS to a divisor")
        self.tpm = None if base else TokenPermutation(self.dim, heads, spectra)
        self.crm = ComplementaryReconstruction(self.dim, heads, spectra, crm_depth, crm_norm_eps) \
            if not base and use_crm else None
        head_modules: dict[str, nn.Module] = {}
        if self.tpm is not None:
            head_modules["tpm"] = BNNeckHead(self.feat_dim, num_classes)
        if direct:
            head_modules["concat"] = BNNeckHead(self.feat_dim, num_classes)
        else:
            head_modules.update({s: BNNeckHead(self.dim, num_classes) for s in spectra})
        self.heads = nn.ModuleDict(head_modules)

    @property
    def fills_missing(self) -> bool:
        """Whether a missing spectrum's part of the feature is filled (CRM reconstructs it) rather than left at zero:
        only then can query and gallery sides without a common spectrum be compared (``TEST.CROSS``)."""
        return self.crm is not None

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated blocks (``MODEL.COMPILE``): each backbone's ``blocks`` (a shared one once), TPM's three
        rotation blocks, every block of every CRM reconstructor."""
        blocks: list[nn.Module] = []
        for backbone in self.backbones.values():
            blocks.extend(b for b in getattr(backbone, "blocks", []) if all(b is not seen for seen in blocks))
        if self.tpm is not None:
            blocks.extend([self.tpm.start, self.tpm.middle, self.tpm.end])
        if self.crm is not None:
            for targets in self.crm.recon.values():
                for reconstructor in targets.values():
                    blocks.extend(reconstructor)
        return blocks

    # ------------------------------------------------------------------------------------------------------------
    def backbone_tokens(self, images: Mapping[str, torch.Tensor], cam_label: torch.Tensor | None = None,
                        ) -> dict[str, torch.Tensor]:
        """[B, 1 + N, D] tokens of every spectrum of the model that ``images`` holds (the others are not run)."""
        unknown = sorted(set(images) - set(SPECTRA))
        if unknown:
            raise ValueError(f"unknown spectra {unknown} in images; known: {', '.join(SPECTRA)}")
        present = [s for s in self.spectra if s in images]
        if self.backbones.is_shared and len(present) > 1:
            batch = [images[s].shape[0] for s in present]
            cams = None if cam_label is None else cam_label.repeat(len(present))
            tokens = self.backbones.shared(torch.cat([images[s] for s in present]), cams)
            return dict(zip(present, tokens.split(batch)))
        return {s: self.backbones[s](images[s], cam_label) for s in present}

    def resolve_missing(self, missing: Collection[str]) -> frozenset[str]:
        """The model's spectra named in ``missing``; raises for unknown names or when nothing would be left."""
        missing = frozenset(missing)
        unknown = sorted(missing - set(SPECTRA))
        if unknown:
            raise ValueError(f"unknown spectra {unknown} in missing; known: {', '.join(SPECTRA)}")
        missing &= set(self.spectra)
        if len(missing) == len(self.spectra):
            raise ValueError(f"every spectrum the model uses ({', '.join(self.spectra)}) is missing")
        return missing

    def features_from_tokens(self, tokens: Mapping[str, torch.Tensor], missing: Collection[str] = frozenset(),
                             cache: dict | None = None, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Test feature [B, feat_dim] from backbone tokens (tokens of missing spectra, if given, are ignored).

        ``cache``: a dict shared by calls on the same tokens (one batch, several settings) so CRM reconstructions
        are computed once. ``cams`` (the batch's camera ids, which methods that run a missing spectrum's backbone
        need) is not used: CRM reconstructs from the available tokens.
        """
        missing = self.resolve_missing(missing)
        absent = [s for s in self.spectra if s not in missing and s not in tokens]
        if absent:
            raise ValueError(f"no tokens for {absent}, which are not in missing={sorted(missing)}")
        tokens = {s: tokens[s] for s in self.spectra if s not in missing}
        if self.tpm is None:
            return self._baseline_feature(tokens, missing)
        if self.crm is not None and missing:
            tokens = self.crm.complete(tokens, missing, cache)
            missing = frozenset()
        feat = self.tpm(tokens)
        if self.neck_feat == "after":
            feat = self._zero_missing(self.heads["tpm"].neck(feat), missing)
        return feat

    def _baseline_feature(self, tokens: Mapping[str, torch.Tensor], missing: frozenset[str]) -> torch.Tensor:
        cls = {s: t[:, 0] for s, t in tokens.items()}
        zeros = torch.zeros_like(next(iter(cls.values())))
        if not self.direct and self.neck_feat == "after":
            return torch.cat([self.heads[s].neck(cls[s]) if s in cls else zeros for s in self.spectra], dim=-1)
        feat = torch.cat([cls.get(s, zeros) for s in self.spectra], dim=-1)
        if self.neck_feat == "after":
            feat = self._zero_missing(self.heads["concat"].neck(feat), missing)
        return feat

    def _zero_missing(self, feat: torch.Tensor, missing: frozenset[str]) -> torch.Tensor:
        if not missing:
            return feat
        parts = feat.split(self.dim, dim=-1)
        return torch.cat([torch.zeros_like(p) if s in missing else p for s, p in zip(self.spectra, parts)], dim=-1)

    def _train_outputs(self, tokens: Mapping[str, torch.Tensor]) -> TrainOutput:
        heads: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.tpm is not None:
            heads["tpm"] = self.heads["tpm"](self.tpm(tokens))
        cls = [tokens[s][:, 0] for s in self.spectra]
        if self.direct:
            heads["concat"] = self.heads["concat"](torch.cat(cls, dim=-1))
        else:
            heads.update({s: self.heads[s](c) for s, c in zip(self.spectra, cls)})
        losses = {"crm": self.crm.loss(tokens)} if self.crm is not None else {}
        return {"heads": heads, "losses": losses}

    def forward(self, images: Mapping[str, torch.Tensor], cam_label: torch.Tensor | None = None,
                missing: Collection[str] = frozenset()) -> TrainOutput | torch.Tensor:
        if self.training:
            if missing:
                raise ValueError("missing spectra are an evaluation setting; the model is in train mode")
            absent = [s for s in self.spectra if s not in images]
            if absent:
                raise ValueError(f"training needs images of every spectrum of the model; missing {absent}")
            return self._train_outputs(self.backbone_tokens(images, cam_label))
        missing = self.resolve_missing(missing)
        tokens = self.backbone_tokens({s: x for s, x in images.items() if s not in missing}, cam_label)
        return self.features_from_tokens(tokens, missing)
