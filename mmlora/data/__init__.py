"""Data: rows from files and folders in every supported format (sources.py, formats.py, ...)
become chat samples (samples.py, loading.py) with checked images (images.py); the pre-scan
(scan.py) and `mmlora data check/preview` (check.py) measure them with the model's processor;
collate.py, packing.py and grouping.py turn them into batches with answer-only labels;
synthetic.py makes the demo's data."""
