"""Offline jobs that combine components: the ImageBind feature cache (`feature_cache`) and the decoders' caption
embedding cache (`caption_cache`). They import data, encoders and decoders; those packages never import them."""
