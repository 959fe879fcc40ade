"""Conditional LoRA parameter generation (Cond P-Diff): library behind the DVC pipeline."""
