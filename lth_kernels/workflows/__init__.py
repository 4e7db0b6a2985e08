"""Workflows: each an hparams class and a runner on the shared Trainer and Ticket."""
