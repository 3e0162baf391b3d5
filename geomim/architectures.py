"""The Swin variants' widths, depths and heads: read by the model, its checkpoint conversion and
the Hub tools (one table, imported by each, so that none imports another for it; outside
`geomim.models`, so that reading it loads no model code)."""

from __future__ import annotations

SWIN_ARCHITECTURES: dict[str, dict] = {
    "geomim_test": dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
    "geomim_base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "geomim_large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
