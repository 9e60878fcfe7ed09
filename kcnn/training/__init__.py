"""The training job: its skeleton (job.py), from-scratch training (train.py), fine-tuning (finetune.py), callbacks,
optimizers, distribution and evaluation."""
