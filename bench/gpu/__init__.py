"""The GPU check of lrsched-fused, run as ``bash bench/gpu_check.sh`` or ``python -m bench.gpu_check``.

==================  ===================================================================================
``cli``             arguments, ``--plan``, the order of the sections, the time budget, the exit status
``record``          what a run records (environment, verdicts, timing rows) and its progress lines
``bucket``          one bucket of tensors driven through the Backend protocol, and the comparisons
``correctness``     each compiled backend (triton, cuda) vs the reference; the optimizer vs torch;
                    CUDA-graph capture; pytest on the GPU
``timings``         CUDA-event timings: ours (triton, cuda) vs ``torch.optim.AdamW(fused=True)`` and a
                    device copy (the bandwidth floor); the bytes each row moves
``report``          the Markdown table, the short table printed last, the CSV / JSON files
==================  ===================================================================================

Only ``cli`` and ``report`` load without torch; the rest is imported once torch is known to work.
"""
