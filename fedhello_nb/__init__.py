"""Federated LoRA fine-tuning on clients with unequal memory: Fed-HeLLo allocation, HierFedLoRA grouping, layer-wise aggregation and what each choice costs, in notebooks.

Modules:

- `fedhello_nb.allocation`: Which LoRA layers each client trains in a round: capacity plans, the geometric patterns (GD-HLA), their randomised version (RGD-HLA), the FIM probability mapping, the Fed-HeLLo schedule and the baselines (ALGORITHMS.md sections 1 and 2).
- `fedhello_nb.model`: Load a classification backbone, attach LoRA with peft, find the LoRA layers block by block, choose which blocks train, and move their state around as plain tensors."""

__version__ = "0.1.0"
