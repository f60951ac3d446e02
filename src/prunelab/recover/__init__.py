"""Recovery after compression: the Junk DNA paper's transfer settings (`transfer`), one
fine-tuning loop (`loop`) and cheap retraining of a few parameters or adapters (`perp`)."""

from prunelab.recover.loop import TrainConfig, TrainResult, fine_tune
from prunelab.recover.perp import add_adapters, merge_adapters, select_trainable
from prunelab.recover.transfer import SETTINGS, TransferSetting

__all__ = ["SETTINGS", "TrainConfig", "TrainResult", "TransferSetting", "add_adapters",
           "fine_tune", "merge_adapters", "select_trainable"]
