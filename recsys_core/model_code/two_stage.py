"""MLflow models-from-code entry: the two-stage (retrieve, then rerank) pyfunc."""

import mlflow.pyfunc
from mlflow.models import set_model

from recsys_core.serving import TwoStageModel


class _TwoStage(TwoStageModel, mlflow.pyfunc.PythonModel):
    pass


set_model(_TwoStage())
