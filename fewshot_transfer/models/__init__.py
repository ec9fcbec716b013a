"""Networks: the shared U-Net segmentor and the small discriminators used by adversarial learners."""

from fewshot_transfer.models.unet import UNet, UNetConfig, build_unet

__all__ = ["UNet", "UNetConfig", "build_unet"]
