"""Shim: checkpoints written before train.py moved to job/embedding/ pickle `job.train._batch_sampler` into
their training_args.bin, so unpickling one needs this path. New code imports job.embedding.trainer."""

from job.embedding.trainer import _batch_sampler

__all__ = ["_batch_sampler"]
