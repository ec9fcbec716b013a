"""Source pretraining: the CAP backbone every transfer learner starts from (cached per seed).

The backbone's auxiliary head (decoder level 2, AdaptSeg's second output) is trained
along with the main output (``AUX_SEG_WEIGHT`` x its seg loss, AdaptSegNet's 0.1): an
output-space discriminator on an untrained head would only ever see noise maps.
"""

from __future__ import annotations

from typing import Any

from fewshot_transfer.losses import seg_loss
from fewshot_transfer.models.unet import UNet
from fewshot_transfer.training.context import LearnerContext
from fewshot_transfer.training.loops import StepBatch, StepHooks, train_steps
from fewshot_transfer.training.streams import slice_batches

#: Bump when source pretraining changes in a way that invalidates cached models.
PRETRAIN_VERSION = 2
#: Weight of the auxiliary head's seg loss in pretraining (AdaptSegNet's lambda_seg).
AUX_SEG_WEIGHT = 0.1


class AuxHeadHooks(StepHooks):
    """Adds the auxiliary head's seg loss on the labeled rows to pretraining."""

    needs_features = True

    def terms(self, batch: StepBatch):
        aux = batch.feats["aux_logits"][: batch.n_labeled]
        return [("seg_aux", AUX_SEG_WEIGHT, seg_loss(aux, batch.y))], {}


def pretrain_key(ctx: LearnerContext) -> dict:
    """Everything the pretrained weights depend on (the model-cache key)."""
    train = ctx.train
    return {
        "version": PRETRAIN_VERSION,
        "source": ctx.source_train.fingerprint,
        "source_rows": len(ctx.source_train),
        "model": ctx.model,
        "steps": train.pretrain_steps,
        "lr": train.lr,
        "batch_size": train.batch_size,
        "augment": train.augment,
        "seed": ctx.seed,
    }


def pretrained_source_model(ctx: LearnerContext) -> UNet:
    """Train (or load) the backbone on labeled source slices for this seed."""
    schedule = ctx.train

    def train() -> dict[str, Any]:
        model = ctx.new_model(salt=1)
        batches = slice_batches(ctx, ctx.source_train, schedule.batch_size, salt=101)
        steps, lr = schedule.pretrain_steps, schedule.lr
        train_steps(ctx, model, batches, steps=steps, lr=lr, phase="pretrain", hooks=AuxHeadHooks())
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    state = ctx.cache.get_or_train("source", pretrain_key(ctx), train)
    model = ctx.new_model(salt=1)
    model.load_state_dict(state)
    return model
