"""Speed benchmarks of adgen-stack: each figure measured next to its baseline, in one run.

`python -m benchmarks.run` (`make bench`) writes docs/benchmarks.md and docs/benchmarks.json.
Design decisions:

- Every claim is a ratio of two figures taken on the same machine in the same run, because
  absolute numbers on a shared 2-core machine move by a factor of two from minute to minute.
- The two sides of a comparison alternate, round by round (A B, then B A, ...), after a warm-up
  run of each, and the headline ratio is the median of the per-round ratios.
- Everything runs on the tiny default model, built once in a temporary VOLUMES_DIR with a
  tokenizer trained on the benchmark's data, so sequence lengths are those of real ADGEN lines.
- The HTTP figures come from a real stack (`shared.devstack.LocalStack`: redis-server, both rq
  workers and uvicorn as subprocesses), never from an in-process test client.
"""
