"""MLflow models-from-code entry: the stage-2 reranker pyfunc."""

import mlflow.pyfunc
from mlflow.models import set_model

from recsys_core.serving import RerankerModel


class _Reranker(RerankerModel, mlflow.pyfunc.PythonModel):
    pass


set_model(_Reranker())
