"""DisWM models and losses in pure PyTorch (no Ray, Redis or Prometheus imports).

    VideoModel     stage 1: beta-VAE encoder -> action-free RSSM -> decoder (pretraining)
    WorldModel     stage 2/3: student beta-VAE encoder -> RSSM -> decoder, reward (, discount)
    ActorCritic    DreamerV2 behaviour learning in imagination
    losses         pure loss functions and `combine` (named terms x configured scales)
"""

from diswm.models.behaviour import ActorCritic, frozen
from diswm.models.losses import (
                                 balanced_kl,
                                 combine,
                                 distill_kl,
                                 gaussian_kl,
                                 lambda_return,
                                 standard_normal_kl,
)
from diswm.models.nets import MLP, BetaVAEEncoder, ImageDecoder, LayerNormGRUCell
from diswm.models.rssm import RSSM
from diswm.models.video import VideoModel, load_pretrained, make_teacher, video_scales
from diswm.models.world_model import WorldModel, eta_at

__all__ = [
    "MLP", "RSSM", "ActorCritic", "BetaVAEEncoder", "ImageDecoder", "LayerNormGRUCell",
    "VideoModel", "WorldModel", "balanced_kl", "combine", "distill_kl", "eta_at", "frozen",
    "gaussian_kl", "lambda_return", "load_pretrained", "make_teacher", "standard_normal_kl",
    "video_scales",
]
