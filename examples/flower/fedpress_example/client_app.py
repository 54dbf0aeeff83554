"""The ClientApp: the simulator's local training, with fedpress's mod on its traffic."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedpress.flower import compression_mod, task

# the one fedpress line on the client: decode what the server sends, encode the reply
app = ClientApp(mods=[compression_mod])


@app.train()
def train(message: Message, context: Context) -> Message:
    return task.train(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return task.evaluate(message, context)
