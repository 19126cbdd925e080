"""Run Python tasks on auto-scaled workers, local or on AWS Batch, from asyncio."""
