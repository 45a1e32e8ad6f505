"""Reading the released checkpoints: the paxml msgpack reader (indexed, one array at a time), its
writer in paxml's own format (tests, benchmarks), the converted orbax form, and finding the
checkpoints and tokenizer in a copy of the release."""
