"""Framework adapters: translate a framework's configs and shapes to the Gaunt layers, nothing more.

- :mod:`.mace_config` / :mod:`.mace_blocks` / :mod:`.mace_convert`: ``tensor_product: gaunt`` for MACE
  (mace-torch 0.3.16): the options, the Gaunt interaction and product-basis blocks, model conversion.
- :mod:`.equiformer_v2` and its ``_config``, ``_selfmix``, ``_data``, ``_convert`` modules: the Gaunt self-mix
  for EquiformerV2 (fairchem-core 1.10.0).

MACE and fairchem are imported only by the modules that need them.
"""
