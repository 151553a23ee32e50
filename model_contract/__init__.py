"""The model contract: what `export/` publishes and every other package reads (torch-free).

One module per fact: file names and name rules (`files`), the repository layout (`repository`),
class labels (`labels`), preprocessing and its one implementation (`preprocessing`), and
config.pbtxt (`triton_config`). docs/model-contract.md describes the contract in prose.
"""
