#!/usr/bin/env python
"""helixbench: which anomaly generator makes industrial anomaly detectors best.

    python run_benchmark.py                         # quick preset on the embedded data
    python run_benchmark.py --dataset mvtec_ad --data-root ~/data/mvtec_ad --preset paper
    python run_benchmark.py report quick            # rebuild tables from stored records
    python run_benchmark.py samples --generator cutpaste
"""
import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
