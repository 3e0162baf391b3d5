"""The variants' widths, depths and heads (Swin, CVA-ViT): read by the models, their checkpoint
conversion and the Hub tools (one table per family, imported by each, so that none imports
another for it; outside `geomim.models`, so that reading it loads no model code)."""

from __future__ import annotations

SWIN_ARCHITECTURES: dict[str, dict] = {
    "geomim_test": dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
    "geomim_base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "geomim_large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}

CVA_VIT_ARCHITECTURES: dict[str, dict] = {
    "geomim_vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "geomim_vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "geomim_vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
}
