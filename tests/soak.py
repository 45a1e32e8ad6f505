"""Bounded-time soak of one loaded model under concurrent mixed calls: `make soak SOAK_SECONDS=120`.

Prints calls made, results differing from their single-threaded values, failures, and resident
memory at the start and end of the measured window.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="an export (default: the tiny VILA-R fixture, exported here)")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--threads", type=int, default=16)
    a = ap.parse_args()
    import psutil
    import vila_tf
    from test_faults import run_concurrent
    path = a.model
    if not path:
        import tiny_models
        tmp = tempfile.mkdtemp(prefix="vila-soak-")
        path = tiny_models.export_fixture("vila_r_tiny", tiny_models.train_spm(os.path.join(tmp, "spm.model")),
                                          os.path.join(tmp, "vila_r", "1"))
    model = vila_tf.load(path)
    run_concurrent(model, a.threads, 0, seconds=10)  # warm-up: compilations, allocator pools
    rss0 = psutil.Process().memory_info().rss
    samples = []
    calls = mismatches = failures = 0
    windows = max(1, int(a.seconds // 10))
    for _ in range(windows):
        n, mm, ff = run_concurrent(model, a.threads, 0, seconds=a.seconds / windows)
        calls, mismatches, failures = calls + n, mismatches + len(mm), failures + len(ff)
        samples.append(psutil.Process().memory_info().rss)
    result = {"model": path, "seconds": a.seconds, "threads": a.threads, "calls": calls,
              "mismatches": mismatches, "failures": failures, "rss_start_mib": round(rss0 / 2 ** 20, 1),
              "rss_end_mib": round(samples[-1] / 2 ** 20, 1),
              "rss_max_growth_mib": round((max(samples) - rss0) / 2 ** 20, 1)}
    print("SOAK-SUMMARY " + json.dumps(result))
    sys.exit(0 if not mismatches and not failures else 1)


if __name__ == "__main__":
    main()
