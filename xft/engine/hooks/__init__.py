from .dataset_info_hook import DatasetInfoHook  # noqa: E402,F401
from .evaluate_chat_hook import EvaluateChatHook  # noqa: E402,F401
from .plot_hook import LossCurveHook, TensorboardBackend  # noqa: E402,F401
from .checkpoint_hook import SafeCheckpointHook  # noqa: E402,F401
from .exact_resume_hook import ExactResumeHook  # noqa: E402,F401
from .preemption_hook import PreemptionHook  # noqa: E402,F401
from .throughput_hook import ThroughputHook  # noqa: E402,F401
from .varlen_attn_args_hook import VarlenAttnArgsToMessageHubHook  # noqa: E402,F401
from .hf_checkpoint_hook import HFCheckpointHook  # noqa: E402,F401
