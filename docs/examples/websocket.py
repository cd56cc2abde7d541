"""WebSocket endpoints take BackgroundTasks too: the tasks run after the endpoint returns."""

from fastapi import FastAPI, WebSocket

from errands import BackgroundTasks

app = FastAPI()
transcripts: list[list[str]] = []


def save_transcript(lines: list[str]) -> None:
    transcripts.append(lines)


@app.websocket("/chat")
async def chat(websocket: WebSocket, tasks: BackgroundTasks) -> None:
    await websocket.accept()
    lines: list[str] = []
    while (line := await websocket.receive_text()) != "bye":
        lines.append(line)
        await websocket.send_text(f"echo: {line}")
    tasks.add_task(save_transcript, lines)
    await websocket.close()
