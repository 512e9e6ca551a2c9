"""Launchers: the submitit launcher (`python -m launch.submit`); the sbatch templates live in slurm/."""
