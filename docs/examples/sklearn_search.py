"""A scikit-learn grid search whose fits run as AWS Batch jobs.

As written, it runs offline against batchcrew's AWS Batch emulator: start
`batchcrew emulator --queue search --job-definition search` and run its `export` lines first.
On AWS, name your own queue and job definition, and leave out `host=` (see the docs).
"""

import joblib
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import batchcrew.joblib  # noqa: F401 - registers the "batchcrew" joblib backend
from batchcrew import aws


def main() -> None:
    features, labels = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0, 100.0], "kernel": ["linear", "rbf"]}
    search = GridSearchCV(SVC(), grid, cv=5, n_jobs=-1)  # 8 candidates x 5 folds = 40 fits

    launcher = aws.BatchLauncher(aws.BatchOptions(job_queue="search", job_definition="search"))
    with joblib.parallel_config(
        backend="batchcrew",
        workers=4,  # at most 4 jobs at once: n_jobs=-1 means these 4
        launcher=launcher,
        host="127.0.0.1",  # the emulator's jobs run on this machine; on AWS, leave it out
        seconds_timeout=600,  # no batch of fits runs longer than 10 minutes
    ):
        search.fit(features, labels)  # one controller for the fit; its jobs end with it

    print("best parameters:", search.best_params_)
    print(f"best score: {search.best_score_:.4f}")


if __name__ == "__main__":
    main()
