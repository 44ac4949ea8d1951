"""Training: `train()` (train.py) on the HF Trainer (trainer.py) with mmlora's batches
(batches.py), evaluation during training (eval_callback.py), atomic checkpoints and exact resume
(checkpoints.py, checkpoint_check.py), guards for long runs, and the training console."""
