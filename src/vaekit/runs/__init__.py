"""Run directories: their layout, atomic files, locks and status (`layout`), the Orbax checkpoints
(`checkpoint`), and loading a trained run back, with the trained run a kind is built on
(`run`: above models and data). `layout` and `checkpoint` import neither models nor data."""
