"""A Hydra multirun's points: decided before launch (resume, skip, fit), and summarised after each job."""
