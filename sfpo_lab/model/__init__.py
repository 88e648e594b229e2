"""The model: how it is built, attends, is sharded and warmed up.

build (HF / GGUF / tiny Qwen2 causal LMs, dtypes), attention (kernel choice, stdlib-only
checks), parallel (precision policy, FSDP strategy and sharding), fsdp_init (sharded
init from the base weights), warmup (the toy base model's supervised warm-up)."""
