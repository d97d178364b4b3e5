"""ST-Net: spot expression from H&E patches (He et al., Nat Biomed Eng 2020)."""

from stfusion.models.stnet.model import DEFAULT_LR, EMBEDDING_KEY, EXPRESSION_SPACE, PRESETS, STNet

__all__ = ["DEFAULT_LR", "EMBEDDING_KEY", "EXPRESSION_SPACE", "PRESETS", "STNet"]
