"""The teacher's forward pass, whole or sharded across processes with FSDP2 (``--fsdp-teacher``).

:func:`teacher_forward` is the one way the training loop, the evaluation and the cache builder run
the teacher: it returns the final (normed) hidden states, optionally every layer's hidden states,
and the output-head weight ``[vocab, hidden]`` to apply a chunk of positions at a time.

:func:`shard_teacher` splits a frozen teacher's parameters across the ``WORLD_SIZE`` processes with
``torch.distributed.fsdp.fully_shard``: one FSDP unit per decoder layer and one root unit (embeddings,
final norm, head) around a small wrapper whose forward runs the base model. Each forward all-gathers
one layer at a time and frees it again, so between layers a process holds about 1/world of the
teacher's weights. The head is copied out whole for the micro-batch (its logits are applied lazily,
chunk by chunk) and the root is resharded right after. Every forward is a collective: all processes
must run the same number of teacher forwards with the same shapes (each on its own batch).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def _base(model):
    return getattr(model, model.base_model_prefix)


def _wrapper_class():
    import torch.nn as nn

    class ShardedTeacher(nn.Module):
        """Root FSDP unit: holds the teacher; forward = base model + a whole copy of the head weight."""

        slimedge_sharded = True  # fully_shard renames the class (FSDPShardedTeacher): mark it instead

        def __init__(self, model):
            super().__init__()
            self.model = model
            self.config = model.config

        def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
            out = _base(self.model)(input_ids=input_ids, attention_mask=attention_mask,
                                    output_hidden_states=output_hidden_states)
            W = self.model.get_output_embeddings().weight.detach().clone()  # [V, H], whole inside forward
            return out.last_hidden_state, (out.hidden_states if output_hidden_states else None), W

    return ShardedTeacher


def is_sharded(teacher) -> bool:
    return getattr(teacher, "slimedge_sharded", False) is True


def teacher_forward(teacher, input_ids, attention_mask=None, output_hidden_states: bool = False, inputs_embeds=None):
    """(last_hidden [B, L, H], hidden_states tuple or None, head weight [V, H]) of the teacher, no grad.
    ``inputs_embeds`` (a whole teacher only) stands for ``input_ids``' embeddings."""
    import torch

    with torch.no_grad():
        if is_sharded(teacher):
            if inputs_embeds is not None:
                raise ValueError("teacher_forward: a sharded teacher takes input ids, not inputs_embeds")
            try:
                return teacher(input_ids, attention_mask, output_hidden_states)
            finally:
                teacher.reshard()  # the root unit stays gathered after forward unless told
        out = _base(teacher)(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                             output_hidden_states=output_hidden_states)
        return (out.last_hidden_state, out.hidden_states if output_hidden_states else None,
                teacher.get_output_embeddings().weight)


def shard_teacher(teacher, device):
    """Shard a frozen ``teacher`` across the initialized process group (FSDP2, one unit per decoder layer).

    ``device`` is the process's device (cpu uses gloo, cuda:N nccl); parameters move there shard by shard.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    names = set(getattr(teacher, "_no_split_modules", None) or [])
    layers = [m for m in teacher.modules() if type(m).__name__ in names]
    if not layers:
        layers = list(getattr(_base(teacher), "layers", []))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    root = _wrapper_class()(teacher)
    fully_shard(root, mesh=mesh)
    root.eval()
    log.info("teacher sharded with FSDP across %d processes (%d layer units + root)", world, len(layers))
    return root
