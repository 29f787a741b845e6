"""Training config fields and defaults; configs/*.py start from :func:`default_config`.

A run is described by one ml_collections ConfigDict (launch/train.py reads a config file and takes
``--config.<field>=<value>`` overrides). Every field is listed here with what it means; a config
file changes only what differs. The whole config is saved with every checkpoint.
"""

from ml_collections import config_dict

TINY_CHECKPOINT = 'tiny'

# The type of a training config (and of its ``config.data`` / ``config.model`` blocks).
TrainConfig = config_dict.ConfigDict


def default_config() -> TrainConfig:
  """Every field of a training config, with generic defaults (no data and no checkpoint set)."""
  config = config_dict.ConfigDict()
  config.seed = 0

  # Optimisation.
  config.total_steps = 1000
  config.batch_size = 32  # global batch: a multiple of data x fsdp
  config.num_microbatches = 1  # gradient accumulation; divides the per-device batch
  config.learning_rate = 1e-4  # peak rate
  config.warmup_steps = 100
  config.end_lr_factor = 0.1  # cosine decay ends at this share of the peak rate
  config.weight_decay = 0.01
  config.clip_norm = 1.0
  config.loss = 'kl'  # kl | soft_ce | js
  config.class_weight_power = 0.0  # 0: no class weights; 1: inverse class frequency; 0.5: sqrt

  # Devices.
  config.mesh_shape = (1, -1, 1)  # (data, fsdp, tensor); one -1 takes the remaining devices

  # Checkpoints and logging.
  config.checkpoint_every = 200  # also when the dev split is evaluated
  config.keep_last = 2
  config.keep_best = 1
  config.best_metric = (
    'js_divergence'  # perax.distributions.metrics.distribution_metrics key, on the dev split
  )
  config.best_mode = 'min'
  config.async_checkpointing = True

  config.model = config_dict.ConfigDict()
  config.model.checkpoint = ''  # HF or perax-converted directory; 'tiny': a tiny random one
  # written to <workdir>/tiny_checkpoint
  config.model.compute_dtype = 'bfloat16'
  config.model.attention_impl = 'einsum'  # einsum | xla | cudnn (perax.models.config.ATTENTION_IMPLS)
  config.model.scan_layers = True  # layer stacks as a lax.scan (one compiled layer) or unrolled
  config.model.remat_policy = 'none'  # none | minimal | dots | full (perax.models.layer_stack)
  config.model.param_dtype = 'float32'  # backbone storage; 'bfloat16' halves a frozen backbone
  # (LoRA / head scopes); 'full' needs float32 masters
  config.model.scope = 'head'  # head | lora | full
  config.model.pooling = 'last'  # last (prompt token) | audio_mean (audio positions)
  config.model.head = 'linear'  # linear | mlp
  config.model.mlp_size = 256
  config.model.lora_targets = ('q_proj', 'v_proj')  # regexes of module paths (a tuple)
  config.model.lora_rank = 8
  config.model.lora_alpha = 16.0

  config.data = config_dict.ConfigDict()
  config.data.corpus = ''  # 'demo': generate the demo corpus when the tables are missing
  config.data.utterances = ''  # '' = <workdir>/data/utterances.parquet
  config.data.distributions = ''  # '' = <workdir>/data/distributions.parquet
  config.data.label_set = 'iemocap4'  # a perax.data.labels label set, or comma-separated labels
  config.data.prompts = ''  # prompts JSON; '' = configs/prompts/default.json
  config.data.prompt_id = ''  # '' = the prompts file's first default prompt
  config.data.train_split = 'train'
  config.data.dev_split = 'dev'  # '' = no dev evaluation (the best checkpoint is the last)
  config.data.test_splits = ('test',)  # evaluated one by one (MSP-Podcast: ('test1',), ...)
  config.data.test_fold = ''  # a fold: its utterances become the test split, the others train
  config.data.dev_fold = ''  # with test_fold: a fold for dev
  config.data.augment = True  # DiME-Aug plan balancing the training split (planned in memory)
  # The DiME-Aug sets written by launch/augment.py (or the pipeline's augment stage). When set, the
  # run trains on / evaluates exactly those sets (their utterances.parquet and distributions.parquet)
  # and plans nothing itself; data.augment, balance, augment_size and eval_size then do not apply.
  config.data.augmented_train_dir = ''  # the training split's written set ('' = plan in memory)
  config.data.eval_set_dirs = ()  # one written balanced set per test split, in test_splits' order
  # The run's one ambiguity level definition (perax.distributions.levels): a JSON file holding a
  # LevelDefinition record, or a distributions.json with a 'levels' record. '' = the 'levels' record
  # of the distributions.json next to data.distributions, else tertiles of the training split's
  # human entropy.
  config.data.level_definition = ''
  # Rows without human votes (n_human == 0, or has_human false) are left out of training and
  # evaluation targets unless this is True (then their proxy-only targets are used).
  config.data.proxy_only_targets = False
  config.data.balance = 'classes'  # classes | cells, for the plan and the balanced evaluation set
  config.data.augment_size = 0  # examples wanted in all; 0 = every class up to the largest
  config.data.eval_size = 0  # balanced evaluation set size; 0 = each class up to the largest
  config.data.bucket_seconds = (2, 4, 8, 16, 30)  # audio length buckets, one compile each
  config.data.max_transcript_tokens = 64
  config.data.padding_side = 'left'
  config.data.num_workers = 0  # Grain worker processes (0: load in the training process)
  return config


def qwen2_audio_lora(config: TrainConfig) -> TrainConfig:
  """Sets ``config`` up for LoRA on Qwen2-Audio-7B's decoder attention, as the corpus configs use it.

  The frozen backbone is stored in bfloat16; adapters and head stay float32.
  """
  config.model.scope = 'lora'
  config.model.param_dtype = 'bfloat16'
  config.model.lora_targets = ('language_model/.*/(q_proj|k_proj|v_proj|o_proj)',)
  config.model.lora_rank = 16
  config.model.lora_alpha = 32.0
  config.model.head = 'mlp'
  return config
