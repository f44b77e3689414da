"""What a plan will cost before it runs: tokens per stage, times a measured throughput, scheduled like the executor.

workload.py    the tokens each stage trains on, scores and generates, from the resolved config (no torch)
throughput.py  the throughput table (<output_dir>/throughput.json): reading, checking, writing, looking up
schedule.py    list scheduling of the plan's stages over the executor's workers
plan_cost.py   the estimate `harness plan` prints: stage seconds, serial and parallel totals, device-hours
calibrate.py   `harness calibrate`: a few timed optimiser steps and generate calls on the suite's own model,
               and start costs fitted to the suite's last run (imports torch)
"""
