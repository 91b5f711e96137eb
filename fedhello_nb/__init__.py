"""Federated LoRA fine-tuning on clients with unequal memory: Fed-HeLLo allocation, HierFedLoRA grouping, layer-wise aggregation and what each choice costs, in notebooks.

Modules:

- `fedhello_nb.allocation`: Which LoRA layers each client trains in a round: capacity plans, the geometric patterns (GD-HLA), their randomised version (RGD-HLA), the FIM probability mapping, the Fed-HeLLo schedule and the baselines (Fed-HeLLo, arXiv 2506.12213).
- `fedhello_nb.fim`: Per-sample gradients of the global model on a proxy set, the diagonal empirical Fisher of every LoRA tensor, one score per layer, and the layer probabilities that FIM-HLA samples from (Fed-HeLLo, arXiv 2506.12213).
- `fedhello_nb.flower`: The same strategies on Flower's deployment runtime: a ServerApp that allocates, aggregates layer-wise and evaluates with the engine's own code, a ClientApp that trains exactly the blocks it was given, and SuperNodes that map to clients through their node configuration.
- `fedhello_nb.model`: Load a classification backbone, attach LoRA with peft, find the LoRA layers block by block, choose which blocks train, and move their state around as plain tensors.
- `fedhello_nb.widgets`: Interactive panels for a notebook: explore allocations, partitions, groups and memory, launch short runs with live curves, and turn what you found into a batch job without retyping it."""

__version__ = "0.1.0"
