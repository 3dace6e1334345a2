"""The frozen ImageBind encoder and the media preprocessing that feeds it.

encoder = load_imagebind(cfg.model.encoder)
vector = encoder(Modality.IMAGE, load_media(Modality.IMAGE, path, cfg.model.encoder)[None])  # (1, 1024)
"""

from nextgpt.encoders.imagebind import ImageBindEncoder, load_imagebind
from nextgpt.encoders.transforms import load_audio, load_image, load_media, load_video

__all__ = ["ImageBindEncoder", "load_audio", "load_image", "load_imagebind", "load_media", "load_video"]
