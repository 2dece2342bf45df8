"""Sparse autoencoders on MLP outputs (the paper's §2, §3.2, App. F): model, training, files,
quality and dictionary matching, one module per job.

  architectures  ARCHITECTURES, the registry: one module per architecture, "relu_l1" (tied ReLU +
            l1, the paper method, the default) and "topk" (Gao et al. 2024: k largest codes, AuxK
            loss), each holding its codes, loss, hand-derived gradients, init and SAELens fields
  model     SparseAutoencoder: what every architecture computes, asking its `arch` for the rest
  norms     normalize_rows_ / normalize_columns_ (and the training loop's buffered forms)
  gemm      the GEMM paths available here (MKL, oneDNN)
  gradients HandGradients: the state of the hand-derived training step on a given path
  step      GradientStep: HandGradients on the path `backend` chose
  backend   choose_backend: the GEMM path measured per machine for large SAEs, cached
  optim     FusedAdam: torch's fused Adam kernel without torch.optim's per-step overhead
  rows      select_rows / as_float_tensor: activation rows -> float32 CPU tensors
  train     SaeTraining (the settings), train_sae, train_saes (one single-threaded job per core),
            train_sae_reference
  files     save_sae / load_sae / read_sae_config: SAELens-style SAE directories, checked on load
  quality   reconstruction_metrics (mse, fvu, l0, dead_fraction, dead_count, l0_histogram)
  matching  dictionary_matching (max cosine, MMCS, Hungarian), max_cosines, random_dictionary_mmcs (its null)

Where artifacts live is not decided here (lfp.core.paths): this package never imports lfp.core.paths or
lfp.stages.
"""

from lfp.sae.architectures import ARCHITECTURES, PAPER_METHOD
from lfp.sae.files import (
    CFG_FILENAME,
    WEIGHTS_FILENAME,
    load_sae,
    read_sae_config,
    save_sae,
)
from lfp.sae.matching import dictionary_matching, max_cosines, random_dictionary_mmcs
from lfp.sae.model import SparseAutoencoder
from lfp.sae.norms import normalize_rows_
from lfp.sae.quality import reconstruction_metrics
from lfp.sae.rows import select_rows
from lfp.sae.train import SaeTraining, train_sae, train_sae_reference, train_saes, usable_cores

__all__ = [
    "ARCHITECTURES",
    "CFG_FILENAME",
    "PAPER_METHOD",
    "WEIGHTS_FILENAME",
    "SaeTraining",
    "SparseAutoencoder",
    "dictionary_matching",
    "load_sae",
    "max_cosines",
    "normalize_rows_",
    "random_dictionary_mmcs",
    "read_sae_config",
    "reconstruction_metrics",
    "save_sae",
    "select_rows",
    "train_sae",
    "train_sae_reference",
    "train_saes",
    "usable_cores",
]
