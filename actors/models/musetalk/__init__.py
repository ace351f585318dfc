"""MuseTalk 1.5 networks (UNet, sd-vae, whisper-tiny encoder) loaded from the public weights layout."""

from actors.models.musetalk.loader import MuseTalkModels, load_musetalk

__all__ = ["MuseTalkModels", "load_musetalk"]
