"""MLflow models-from-code entry: the stage-1 retriever pyfunc."""

import mlflow.pyfunc
from mlflow.models import set_model

from recsys_core.serving import RetrieverModel


class _Retriever(RetrieverModel, mlflow.pyfunc.PythonModel):
    pass


set_model(_Retriever())
