"""``anil``: Almost No Inner Loop (Raghu et al. 2020) — only the head adapts, in both loops.

"Head" is the U-Net's final 1x1 convolution (``head = "head"``) or that plus the last
full-resolution decoder block (``head = "last_block"``). Inner loop: ``inner_steps`` Adam
steps at ``lr`` on the head (the body's features are computed once per task); the outer
loop (second order) meta-trains every parameter, so the body learns features a re-fit
head can use. Test time: finetune's loop and budget (``steps`` Adam steps at ``lr``,
finetune's stream) on the head only. Its control is ``anil-control`` (the same head-only
adaptation of the source model): ``anil`` − ``anil-control`` is what meta-training adds.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Control, register
from fewshot_transfer.learners.hparams import HP, Categorical
from fewshot_transfer.learners.meta_base import MetaLearner, meta_hparams
from fewshot_transfer.meta.training import HEAD_SCOPES, head_prefixes
from fewshot_transfer.training import LearnerContext


@register
class ANIL(MetaLearner):
    name = "anil"
    control = Control(off={"meta_steps": 0})
    hparams = {
        **meta_hparams(second_order=True, meta_steps=60),
        "head": HP("head", "what adapts: head (the final 1x1 conv) or last_block", search=Categorical(HEAD_SCOPES)),
    }

    def adapt(self, ctx: LearnerContext) -> tuple[str, ...]:
        return head_prefixes(ctx.params.head, ctx.new_model())
