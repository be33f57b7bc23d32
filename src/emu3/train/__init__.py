"""Training: data preparation, language-model fine-tuning and vision-tokenizer training.

`prepare` (JSONL manifest -> token shards), `sft.train_lm` (`emu3 train`), `vq.train_vq`
(`emu3 train-vq`), with the shared pieces: `manifest`, `examples` (layouts and loss masks), `shards`,
`batching`, `lora`, `optim`, `loop`, `state` (checkpoints), `distributed` (torchrun + FSDP2),
`export`, `metrics`, `config` and `cli`. Nothing is imported here, so `emu3 --help` stays fast.
"""
