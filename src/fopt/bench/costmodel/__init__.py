"""The calibrated latency model: kernel classes (`kernels`), synthetic probe networks (`probes`),
the fit of their timings (`fit`), the per-node prediction (`predict`), `fopt bench --calibrate`
itself (`calibrate`) and the per-machine cache (`cache`). Never fitted on a registry model."""
