"""The ClientApp: the simulator's local training behind fedpress's mod, which also
answers the round protocol's later phases."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedpress.flower import compression_mod, task

app = ClientApp(mods=[compression_mod])


@app.train()
def train(message: Message, context: Context) -> Message:
    return task.train(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return task.evaluate(message, context)
