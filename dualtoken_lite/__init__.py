"""dualtoken_lite: a compact, educational reference implementation of DualToken (arXiv 2503.14324).

The package reads in the order the notebooks teach (docs/method.md describes the method it implements); each
chapter imports only from the ones above it in this list (tests/test_structure.py):

    settings.py          plumbing: user errors, config round trips, atomic files
    quantizers/   01-02  nearest code, EMA k-means codebook, straight-through; the residual quantizer
    model/        03-04  the SigLIP-layout tower, pre/post-quant projections, conv decoder, DualToken, save/load,
                         the model sizes (tiny ... the paper's)
    losses/       05     every loss term and its weights, LPIPS, the discriminator and its schedule, stages
    datasets/            images in, shards and folders, the resumable loader
    tinyworld/    03     the small offline world: its drawings, shards and teacher
    evaluation/          metrics and the one evaluation loop (through the codes)
    training/     06     the presets, the loop, its steps, checkpoints and resume, optimizers, distributed, logs
    tools/               the command-line tools: evaluate, reconstruct, tokens, convert, ablation, teacher
    unified/      07     a tiny unified model that reads and writes DualToken tokens
    __main__.py          the command table: ``python -m dualtoken_lite --help``

The public API::

    from dualtoken_lite import DualToken, model_preset
    model = DualToken(model_preset("tiny")).eval()
    pixel_codes, semantic_codes = model.encode(images)   # (B, 3, 64, 64) -> (B, 8, 8, 8), (B, 8, 8, 4)
    x_hat = model.decode(pixel_codes)                    # (B, 3, 64, 64) in [-1, 1]
"""

from dualtoken_lite.losses.config import LossConfig
from dualtoken_lite.model.config import BackboneConfig, ModelConfig, model_preset
from dualtoken_lite.model.dualtoken import DualToken, DualTokenOutput
from dualtoken_lite.quantizers.codebook import Codebook
from dualtoken_lite.quantizers.residual import QuantizerConfig, ResidualQuantizer, RVQOutput
from dualtoken_lite.quantizers.vector import VectorQuantizer
from dualtoken_lite.settings import ConfigError
from dualtoken_lite.training.config import TrainConfig
from dualtoken_lite.training.presets import PRESETS, loss_preset, preset

__version__ = "0.1.0"

from_pretrained = DualToken.from_pretrained  # a save_pretrained folder -> a DualToken in eval mode

__all__ = [
    "PRESETS", "BackboneConfig", "Codebook", "ConfigError", "DualToken", "DualTokenOutput", "LossConfig",
    "ModelConfig", "QuantizerConfig", "RVQOutput", "ResidualQuantizer", "TrainConfig", "VectorQuantizer",
    "from_pretrained", "loss_preset", "model_preset", "preset",
]
