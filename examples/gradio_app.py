"""A Gradio page over the same DSPy program: paste a paragraph, get its knowledge graph.

    examples/.venv/bin/python examples/gradio_app.py [--pool http://127.0.0.1:8000/v1] [--port 7860]
"""

import argparse

import gradio as gr

import dspy_graph


def extract(paragraph):
    if not paragraph.strip():
        return "Paste a paragraph first.", []
    prediction = dspy_graph.build_program()(paragraph=paragraph)
    return prediction.entities, [list(t) for t in dspy_graph.triples(prediction.relations)]


def build_app():
    with gr.Blocks(title="Knowledge graph (modelpool)") as app:
        gr.Markdown("# Knowledge graph extraction\nDSPy `Predict` through the modelpool pool.")
        paragraph = gr.Textbox(label="Paragraph", lines=5, value=dspy_graph.PARAGRAPHS[0])
        button = gr.Button("Extract")
        entities = gr.Textbox(label="Entities")
        relations = gr.Dataframe(headers=["subject", "relation", "object"], label="Relations")
        button.click(extract, inputs=paragraph, outputs=[entities, relations], api_name="extract")
    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    dspy_graph.configure(args.pool)
    build_app().queue(default_concurrency_limit=4).launch(server_name="127.0.0.1", server_port=args.port)


if __name__ == "__main__":
    main()
