"""``slimedge demo``: the whole pipeline on a model the project builds itself.

:mod:`.corpus` (Python standard-library text) → :mod:`.teacher` (the recipe of the shipped small
Llama in ``slimedge/data/demo-teacher``) → :mod:`.pipeline` (quantize, distill, bench) →
:mod:`.table` (the comparison table). Nothing here imports torch at module level.
"""
