"""`dytrim sweep`: whole result tables (rows x columns x seeds) from a table file, run locally or on Slurm, with
the run directories on disk as the only truth; see docs/sweeps.md. Sits above cli: it launches `dytrim train`."""
