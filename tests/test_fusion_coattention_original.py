"""ViLBERT's and METER's fusion against their original code: parity against the transcribed original layers.

Neither original repository installs here (facebookresearch/vilbert-multi-task, zdou0830/METER), so their layer code
is transcribed below as it stands in those repositories: ViLBERT's `vilbert/vilbert.py` (`BertLayerNorm`'s fallback,
`BertEmbeddings`, `BertSelfAttention` ... `BertConnectionLayer`, `BertEncoder`, the poolers, `BertImageEmbeddings`,
the prediction heads (`BertPredictionHeadTransform`, `BertImgPredictionHeadTransform`, `BertLMPredictionHead`,
`BertPreTrainingHeads`, `BertImagePredictionHead`), `BertModel` with `nn.Module` for its `BertPreTrainedModel` base
and without its `init_weights`, and `SimpleClassifier`) and METER's `meter/modules/bert_model.py`
(`BertSelfAttention` ... `BertCrossLayer`, prefixed `Meter` here, without `BertAttention.prune_heads`, which needs
transformers helpers that transformers 5 no longer has and nothing calls), `meter/modules/heads.py` (`Pooler`,
`ITMHead`) and the fusion part of `METERTransformerSS.__init__` / `infer` with its `vqa_classifier`. The only other
edits are the Python 2 `unicode` clauses of ViLBERT's activation lookups, dropped. Tiny sizes, random weights: our
weights are loaded into the transcribed modules and every output compared within 1e-4. This is not a checkpoint
conversion: no published ViLBERT or METER weights are read.
"""

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from transformers import RobertaConfig
from transformers.activations import ACT2FN as HF_ACT2FN
from transformers.pytorch_utils import apply_chunking_to_forward

from modeling_vlp import VLPFusionConfig, VLPFusionForPreTraining
from modeling_vlp.presets import get_preset_config

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-4


# ==============================================================================================================
# ViLBERT, transcribed from facebookresearch/vilbert-multi-task vilbert/vilbert.py
# ==============================================================================================================


def gelu(x):
    """Implementation of the gelu activation function.
        For information: OpenAI GPT's gelu is slightly different (and gives slightly different results):
        0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))
        Also see https://arxiv.org/abs/1606.08415
    """
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class GeLU(nn.Module):
    """Implementation of the gelu activation function.
        For information: OpenAI GPT's gelu is slightly different (and gives slightly different results):
        0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))
        Also see https://arxiv.org/abs/1606.08415
    """

    def __init__(self):
        super().__init__()

    def forward(self, x):
        return gelu(x)


def swish(x):
    return x * torch.sigmoid(x)


ACT2FN = {"gelu": gelu, "relu": torch.nn.functional.relu, "swish": swish}


class BertLayerNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-12):
        """Construct a layernorm module in the TF style (epsilon inside the square root).
        """
        super(BertLayerNorm, self).__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.variance_epsilon)
        return self.weight * x + self.bias


class BertEmbeddings(nn.Module):
    """Construct the embeddings from word, position and token_type embeddings.
    """

    def __init__(self, config):
        super(BertEmbeddings, self).__init__()

        self.task_specific_tokens = config.task_specific_tokens
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=0
        )
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size
        )
        self.token_type_embeddings = nn.Embedding(
            config.type_vocab_size, config.hidden_size
        )

        # self.LayerNorm is not snake-cased to stick with TensorFlow model variable name and be able to load
        # any TensorFlow checkpoint file
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

        if self.task_specific_tokens:
            self.task_embeddings = nn.Embedding(20, config.hidden_size)

    def forward(self, input_ids, token_type_ids=None, task_ids=None, position_ids=None):

        seq_length = input_ids.size(1)
        position_ids = torch.arange(
            seq_length, dtype=torch.long, device=input_ids.device
        )
        position_ids = position_ids.unsqueeze(0).expand_as(input_ids)
        words_embeddings = self.word_embeddings(input_ids)
        position_embeddings = self.position_embeddings(position_ids)
        token_type_embeddings = self.token_type_embeddings(token_type_ids)
        embeddings = words_embeddings + position_embeddings + token_type_embeddings

        if self.task_specific_tokens:
            task_embeddings = self.task_embeddings(task_ids)
            embeddings = torch.cat(
                [embeddings[:, 0:1], task_embeddings, embeddings[:, 1:]], dim=1
            )

        embeddings = self.LayerNorm(embeddings)
        embeddings = self.dropout(embeddings)

        return embeddings


class BertSelfAttention(nn.Module):
    def __init__(self, config):
        super(BertSelfAttention, self).__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                "The hidden size (%d) is not a multiple of the number of attention "
                "heads (%d)" % (config.hidden_size, config.num_attention_heads)
            )
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = int(config.hidden_size / config.num_attention_heads)
        self.all_head_size = self.num_attention_heads * self.attention_head_size

        self.visualization = config.visualization

        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)

        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (
            self.num_attention_heads,
            self.attention_head_size,
        )
        x = x.view(*new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask):
        mixed_query_layer = self.query(hidden_states)
        mixed_key_layer = self.key(hidden_states)
        mixed_value_layer = self.value(hidden_states)

        query_layer = self.transpose_for_scores(mixed_query_layer)
        key_layer = self.transpose_for_scores(mixed_key_layer)
        value_layer = self.transpose_for_scores(mixed_value_layer)

        # Take the dot product between "query" and "key" to get the raw attention scores.
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        # Apply the attention mask is (precomputed for all layers in BertModel forward() function)
        attention_scores = attention_scores + attention_mask

        # Normalize the attention scores to probabilities.
        attention_probs = nn.Softmax(dim=-1)(attention_scores)

        # This is actually dropping out entire tokens to attend to, which might
        # seem a bit unusual, but is taken from the original Transformer paper.
        attention_probs = self.dropout(attention_probs)

        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        context_layer = context_layer.view(*new_context_layer_shape)

        if self.visualization:
            attn_data = {
                "attn": attention_probs,
                "queries": query_layer,
                "keys": key_layer,
            }
        else:
            attn_data = None

        return context_layer, attn_data


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super(BertSelfOutput, self).__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class BertAttention(nn.Module):
    def __init__(self, config):
        super(BertAttention, self).__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, input_tensor, attention_mask):
        self_output, attention_probs = self.self(input_tensor, attention_mask)
        attention_output = self.output(self_output, input_tensor)
        return attention_output, attention_probs


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super(BertIntermediate, self).__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        if isinstance(config.hidden_act, str):
            self.intermediate_act_fn = ACT2FN[config.hidden_act]
        else:
            self.intermediate_act_fn = config.hidden_act

    def forward(self, hidden_states):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.intermediate_act_fn(hidden_states)
        return hidden_states


class BertOutput(nn.Module):
    def __init__(self, config):
        super(BertOutput, self).__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class BertLayer(nn.Module):
    def __init__(self, config):
        super(BertLayer, self).__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, attention_mask):
        attention_output, attention_probs = self.attention(
            hidden_states, attention_mask
        )
        intermediate_output = self.intermediate(attention_output)
        layer_output = self.output(intermediate_output, attention_output)
        return layer_output, attention_probs


class BertImageSelfAttention(nn.Module):
    def __init__(self, config):
        super(BertImageSelfAttention, self).__init__()
        if config.v_hidden_size % config.v_num_attention_heads != 0:
            raise ValueError(
                "The hidden size (%d) is not a multiple of the number of attention "
                "heads (%d)" % (config.v_hidden_size, config.v_num_attention_heads)
            )
        self.dynamic_attention = config.dynamic_attention
        self.num_attention_heads = config.v_num_attention_heads
        self.attention_head_size = int(
            config.v_hidden_size / config.v_num_attention_heads
        )

        self.visualization = config.visualization

        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.v_hidden_size, self.all_head_size)
        self.key = nn.Linear(config.v_hidden_size, self.all_head_size)
        self.value = nn.Linear(config.v_hidden_size, self.all_head_size)

        if self.dynamic_attention:
            self.dyLinear_q = nn.Linear(config.hidden_size, self.all_head_size)
            self.dyLinear_k = nn.Linear(config.hidden_size, self.all_head_size)

        self.dropout = nn.Dropout(config.v_attention_probs_dropout_prob)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (
            self.num_attention_heads,
            self.attention_head_size,
        )
        x = x.view(*new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask, txt_embedding, txt_attention_mask):

        mixed_query_layer = self.query(hidden_states)
        mixed_key_layer = self.key(hidden_states)
        mixed_value_layer = self.value(hidden_states)

        if self.dynamic_attention:
            pool_embedding = (txt_embedding * txt_attention_mask).sum(1)
            pool_embedding = pool_embedding / txt_attention_mask.sum(1)

            # given pool embedding, Linear and Sigmoid layer.
            gate_q = 1 + torch.sigmoid(self.dyLinear_q(pool_embedding))
            gate_k = 1 + torch.sigmoid(self.dyLinear_k(pool_embedding))

            mixed_query_layer = mixed_query_layer * gate_q.unsqueeze(1)
            mixed_key_layer = mixed_key_layer * gate_k.unsqueeze(1)

        query_layer = self.transpose_for_scores(mixed_query_layer)
        key_layer = self.transpose_for_scores(mixed_key_layer)
        value_layer = self.transpose_for_scores(mixed_value_layer)

        # Take the dot product between "query" and "key" to get the raw attention scores.
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        # Apply the attention mask is (precomputed for all layers in BertModel forward() function)
        attention_scores = attention_scores + attention_mask

        # Normalize the attention scores to probabilities.
        attention_probs = nn.Softmax(dim=-1)(attention_scores)

        # This is actually dropping out entire tokens to attend to, which might
        # seem a bit unusual, but is taken from the original Transformer paper.
        attention_probs = self.dropout(attention_probs)

        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        context_layer = context_layer.view(*new_context_layer_shape)

        if self.visualization:
            attn_data = {
                "attn": attention_probs,
                "queries": query_layer,
                "keys": key_layer,
            }
        else:
            attn_data = None

        return context_layer, attn_data


class BertImageSelfOutput(nn.Module):
    def __init__(self, config):
        super(BertImageSelfOutput, self).__init__()
        self.dense = nn.Linear(config.v_hidden_size, config.v_hidden_size)
        self.LayerNorm = BertLayerNorm(config.v_hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.v_hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class BertImageAttention(nn.Module):
    def __init__(self, config):
        super(BertImageAttention, self).__init__()
        self.self = BertImageSelfAttention(config)
        self.output = BertImageSelfOutput(config)

    def forward(self, input_tensor, attention_mask, txt_embedding, txt_attention_mask):
        self_output, attention_probs = self.self(
            input_tensor, attention_mask, txt_embedding, txt_attention_mask
        )
        attention_output = self.output(self_output, input_tensor)
        return attention_output, attention_probs


class BertImageIntermediate(nn.Module):
    def __init__(self, config):
        super(BertImageIntermediate, self).__init__()
        self.dense = nn.Linear(config.v_hidden_size, config.v_intermediate_size)
        if isinstance(config.v_hidden_act, str):
            self.intermediate_act_fn = ACT2FN[config.v_hidden_act]
        else:
            self.intermediate_act_fn = config.v_hidden_act

    def forward(self, hidden_states):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.intermediate_act_fn(hidden_states)
        return hidden_states


class BertImageOutput(nn.Module):
    def __init__(self, config):
        super(BertImageOutput, self).__init__()
        self.dense = nn.Linear(config.v_intermediate_size, config.v_hidden_size)
        self.LayerNorm = BertLayerNorm(config.v_hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.v_hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class BertImageLayer(nn.Module):
    def __init__(self, config):
        super(BertImageLayer, self).__init__()
        self.attention = BertImageAttention(config)
        self.intermediate = BertImageIntermediate(config)
        self.output = BertImageOutput(config)

    def forward(self, hidden_states, attention_mask, txt_embedding, txt_attention_mask):
        attention_output, attention_probs = self.attention(
            hidden_states, attention_mask, txt_embedding, txt_attention_mask
        )
        intermediate_output = self.intermediate(attention_output)
        layer_output = self.output(intermediate_output, attention_output)
        return layer_output, attention_probs


class BertBiAttention(nn.Module):
    def __init__(self, config):
        super(BertBiAttention, self).__init__()
        if config.bi_hidden_size % config.bi_num_attention_heads != 0:
            raise ValueError(
                "The hidden size (%d) is not a multiple of the number of attention "
                "heads (%d)" % (config.bi_hidden_size, config.bi_num_attention_heads)
            )

        self.visualization = config.visualization
        self.num_attention_heads = config.bi_num_attention_heads
        self.attention_head_size = int(
            config.bi_hidden_size / config.bi_num_attention_heads
        )
        self.all_head_size = self.num_attention_heads * self.attention_head_size

        # self.scale = nn.Linear(1, self.num_attention_heads, bias=False)
        # self.scale_act_fn = ACT2FN['relu']

        self.query1 = nn.Linear(config.v_hidden_size, self.all_head_size)
        self.key1 = nn.Linear(config.v_hidden_size, self.all_head_size)
        self.value1 = nn.Linear(config.v_hidden_size, self.all_head_size)
        # self.logit1 = nn.Linear(config.hidden_size, self.num_attention_heads)

        self.dropout1 = nn.Dropout(config.v_attention_probs_dropout_prob)

        self.query2 = nn.Linear(config.hidden_size, self.all_head_size)
        self.key2 = nn.Linear(config.hidden_size, self.all_head_size)
        self.value2 = nn.Linear(config.hidden_size, self.all_head_size)
        # self.logit2 = nn.Linear(config.hidden_size, self.num_attention_heads)

        self.dropout2 = nn.Dropout(config.attention_probs_dropout_prob)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (
            self.num_attention_heads,
            self.attention_head_size,
        )
        x = x.view(*new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(
        self,
        input_tensor1,
        attention_mask1,
        input_tensor2,
        attention_mask2,
        co_attention_mask=None,
        use_co_attention_mask=False,
    ):

        # for vision input.
        mixed_query_layer1 = self.query1(input_tensor1)
        mixed_key_layer1 = self.key1(input_tensor1)
        mixed_value_layer1 = self.value1(input_tensor1)
        # mixed_logit_layer1 = self.logit1(input_tensor1)

        query_layer1 = self.transpose_for_scores(mixed_query_layer1)
        key_layer1 = self.transpose_for_scores(mixed_key_layer1)
        value_layer1 = self.transpose_for_scores(mixed_value_layer1)
        # logit_layer1 = self.transpose_for_logits(mixed_logit_layer1)

        # for text input:
        mixed_query_layer2 = self.query2(input_tensor2)
        mixed_key_layer2 = self.key2(input_tensor2)
        mixed_value_layer2 = self.value2(input_tensor2)
        # mixed_logit_layer2 = self.logit2(input_tensor2)

        query_layer2 = self.transpose_for_scores(mixed_query_layer2)
        key_layer2 = self.transpose_for_scores(mixed_key_layer2)
        value_layer2 = self.transpose_for_scores(mixed_value_layer2)
        # logit_layer2 = self.transpose_for_logits(mixed_logit_layer2)

        # Take the dot product between "query2" and "key1" to get the raw attention scores for value 1.
        attention_scores1 = torch.matmul(query_layer2, key_layer1.transpose(-1, -2))
        attention_scores1 = attention_scores1 / math.sqrt(self.attention_head_size)
        attention_scores1 = attention_scores1 + attention_mask1
        # if use_co_attention_mask:
        # attention_scores1 = attention_scores1 + co_attention_mask.permute(0,1,3,2)

        # Normalize the attention scores to probabilities.
        attention_probs1 = nn.Softmax(dim=-1)(attention_scores1)

        # This is actually dropping out entire tokens to attend to, which might
        # seem a bit unusual, but is taken from the original Transformer paper.
        attention_probs1 = self.dropout1(attention_probs1)

        context_layer1 = torch.matmul(attention_probs1, value_layer1)
        context_layer1 = context_layer1.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape1 = context_layer1.size()[:-2] + (self.all_head_size,)
        context_layer1 = context_layer1.view(*new_context_layer_shape1)

        # Take the dot product between "query1" and "key2" to get the raw attention scores for value 2.
        attention_scores2 = torch.matmul(query_layer1, key_layer2.transpose(-1, -2))
        attention_scores2 = attention_scores2 / math.sqrt(self.attention_head_size)
        # Apply the attention mask is (precomputed for all layers in BertModel forward() function)

        # we can comment this line for single flow.
        attention_scores2 = attention_scores2 + attention_mask2
        # if use_co_attention_mask:
        # attention_scores2 = attention_scores2 + co_attention_mask

        # Normalize the attention scores to probabilities.
        attention_probs2 = nn.Softmax(dim=-1)(attention_scores2)

        # This is actually dropping out entire tokens to attend to, which might
        # seem a bit unusual, but is taken from the original Transformer paper.
        attention_probs2 = self.dropout2(attention_probs2)

        context_layer2 = torch.matmul(attention_probs2, value_layer2)
        context_layer2 = context_layer2.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape2 = context_layer2.size()[:-2] + (self.all_head_size,)
        context_layer2 = context_layer2.view(*new_context_layer_shape2)

        attn_data = None

        if self.visualization:
            attn_data = {
                "attn1": attention_probs1,
                "queries1": query_layer2,
                "keys1": key_layer1,
                "attn2": attention_probs2,
                "querues2": query_layer1,
                "keys2": key_layer2,
            }

        return context_layer1, context_layer2, attn_data


class BertBiOutput(nn.Module):
    def __init__(self, config):
        super(BertBiOutput, self).__init__()

        self.dense1 = nn.Linear(config.bi_hidden_size, config.v_hidden_size)
        self.LayerNorm1 = BertLayerNorm(config.v_hidden_size, eps=1e-12)
        self.dropout1 = nn.Dropout(config.v_hidden_dropout_prob)

        self.q_dense1 = nn.Linear(config.bi_hidden_size, config.v_hidden_size)
        self.q_dropout1 = nn.Dropout(config.v_hidden_dropout_prob)

        self.dense2 = nn.Linear(config.bi_hidden_size, config.hidden_size)
        self.LayerNorm2 = BertLayerNorm(config.hidden_size, eps=1e-12)
        self.dropout2 = nn.Dropout(config.hidden_dropout_prob)

        self.q_dense2 = nn.Linear(config.bi_hidden_size, config.hidden_size)
        self.q_dropout2 = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states1, input_tensor1, hidden_states2, input_tensor2):

        context_state1 = self.dense1(hidden_states1)
        context_state1 = self.dropout1(context_state1)

        context_state2 = self.dense2(hidden_states2)
        context_state2 = self.dropout2(context_state2)

        hidden_states1 = self.LayerNorm1(context_state1 + input_tensor1)
        hidden_states2 = self.LayerNorm2(context_state2 + input_tensor2)

        return hidden_states1, hidden_states2


class BertConnectionLayer(nn.Module):
    def __init__(self, config):
        super(BertConnectionLayer, self).__init__()
        self.biattention = BertBiAttention(config)

        self.biOutput = BertBiOutput(config)

        self.v_intermediate = BertImageIntermediate(config)
        self.v_output = BertImageOutput(config)

        self.t_intermediate = BertIntermediate(config)
        self.t_output = BertOutput(config)

    def forward(
        self,
        input_tensor1,
        attention_mask1,
        input_tensor2,
        attention_mask2,
        co_attention_mask=None,
        use_co_attention_mask=False,
    ):

        bi_output1, bi_output2, co_attention_probs = self.biattention(
            input_tensor1,
            attention_mask1,
            input_tensor2,
            attention_mask2,
            co_attention_mask,
            use_co_attention_mask,
        )

        attention_output1, attention_output2 = self.biOutput(
            bi_output2, input_tensor1, bi_output1, input_tensor2
        )

        intermediate_output1 = self.v_intermediate(attention_output1)
        layer_output1 = self.v_output(intermediate_output1, attention_output1)

        intermediate_output2 = self.t_intermediate(attention_output2)
        layer_output2 = self.t_output(intermediate_output2, attention_output2)

        return layer_output1, layer_output2, co_attention_probs


class BertEncoder(nn.Module):
    def __init__(self, config):
        super(BertEncoder, self).__init__()

        # in the bert encoder, we need to extract three things here.
        # text bert layer: BertLayer
        # vision bert layer: BertImageLayer
        # Bi-Attention: Given the output of two bertlayer, perform bi-directional
        # attention and add on two layers.

        self.FAST_MODE = config.fast_mode
        self.with_coattention = config.with_coattention
        self.v_biattention_id = config.v_biattention_id
        self.t_biattention_id = config.t_biattention_id
        self.in_batch_pairs = config.in_batch_pairs
        self.fixed_t_layer = config.fixed_t_layer
        self.fixed_v_layer = config.fixed_v_layer
        layer = BertLayer(config)
        v_layer = BertImageLayer(config)
        connect_layer = BertConnectionLayer(config)

        self.layer = nn.ModuleList(
            [copy.deepcopy(layer) for _ in range(config.num_hidden_layers)]
        )
        self.v_layer = nn.ModuleList(
            [copy.deepcopy(v_layer) for _ in range(config.v_num_hidden_layers)]
        )
        self.c_layer = nn.ModuleList(
            [copy.deepcopy(connect_layer) for _ in range(len(config.v_biattention_id))]
        )

    def forward(
        self,
        txt_embedding,
        image_embedding,
        txt_attention_mask,
        txt_attention_mask2,
        image_attention_mask,
        co_attention_mask=None,
        output_all_encoded_layers=True,
        output_all_attention_masks=False,
    ):

        v_start = 0
        t_start = 0
        count = 0
        all_encoder_layers_t = []
        all_encoder_layers_v = []

        all_attention_mask_t = []
        all_attnetion_mask_v = []
        all_attention_mask_c = []

        batch_size, num_words, t_hidden_size = txt_embedding.size()
        _, num_regions, v_hidden_size = image_embedding.size()

        use_co_attention_mask = False
        for v_layer_id, t_layer_id in zip(self.v_biattention_id, self.t_biattention_id):

            v_end = v_layer_id
            t_end = t_layer_id

            assert self.fixed_t_layer <= t_end
            assert self.fixed_v_layer <= v_end

            for idx in range(t_start, self.fixed_t_layer):
                with torch.no_grad():
                    txt_embedding, txt_attention_probs = self.layer[idx](
                        txt_embedding, txt_attention_mask
                    )
                    t_start = self.fixed_t_layer
                    if output_all_attention_masks:
                        all_attention_mask_t.append(txt_attention_probs)

            for idx in range(t_start, t_end):
                txt_embedding, txt_attention_probs = self.layer[idx](
                    txt_embedding, txt_attention_mask
                )
                if output_all_attention_masks:
                    all_attention_mask_t.append(txt_attention_probs)

            for idx in range(v_start, self.fixed_v_layer):
                with torch.no_grad():
                    image_embedding, image_attention_probs = self.v_layer[idx](
                        image_embedding,
                        image_attention_mask,
                        txt_embedding,
                        txt_attention_mask2,
                    )
                    v_start = self.fixed_v_layer

                    if output_all_attention_masks:
                        all_attnetion_mask_v.append(image_attention_probs)

            for idx in range(v_start, v_end):
                image_embedding, image_attention_probs = self.v_layer[idx](
                    image_embedding,
                    image_attention_mask,
                    txt_embedding,
                    txt_attention_mask2,
                )

                if output_all_attention_masks:
                    all_attnetion_mask_v.append(image_attention_probs)

            if count == 0 and self.in_batch_pairs:
                # new batch size is the batch_size ^2
                image_embedding = (
                    image_embedding.unsqueeze(0)
                    .expand(batch_size, batch_size, num_regions, v_hidden_size)
                    .contiguous()
                    .view(batch_size * batch_size, num_regions, v_hidden_size)
                )
                image_attention_mask = (
                    image_attention_mask.unsqueeze(0)
                    .expand(batch_size, batch_size, 1, 1, num_regions)
                    .contiguous()
                    .view(batch_size * batch_size, 1, 1, num_regions)
                )

                txt_embedding = (
                    txt_embedding.unsqueeze(1)
                    .expand(batch_size, batch_size, num_words, t_hidden_size)
                    .contiguous()
                    .view(batch_size * batch_size, num_words, t_hidden_size)
                )
                txt_attention_mask = (
                    txt_attention_mask.unsqueeze(1)
                    .expand(batch_size, batch_size, 1, 1, num_words)
                    .contiguous()
                    .view(batch_size * batch_size, 1, 1, num_words)
                )
                co_attention_mask = (
                    co_attention_mask.unsqueeze(1)
                    .expand(batch_size, batch_size, 1, num_regions, num_words)
                    .contiguous()
                    .view(batch_size * batch_size, 1, num_regions, num_words)
                )

            if count == 0 and self.FAST_MODE:
                txt_embedding = txt_embedding.expand(
                    image_embedding.size(0),
                    txt_embedding.size(1),
                    txt_embedding.size(2),
                )
                txt_attention_mask = txt_attention_mask.expand(
                    image_embedding.size(0),
                    txt_attention_mask.size(1),
                    txt_attention_mask.size(2),
                    txt_attention_mask.size(3),
                )

            if self.with_coattention:
                # do the bi attention.
                image_embedding, txt_embedding, co_attention_probs = self.c_layer[
                    count
                ](
                    image_embedding,
                    image_attention_mask,
                    txt_embedding,
                    txt_attention_mask,
                    co_attention_mask,
                    use_co_attention_mask,
                )

                if output_all_attention_masks:
                    all_attention_mask_c.append(co_attention_probs)

            v_start = v_end
            t_start = t_end
            count += 1

            if output_all_encoded_layers:
                all_encoder_layers_t.append(txt_embedding)
                all_encoder_layers_v.append(image_embedding)

        for idx in range(v_start, len(self.v_layer)):
            image_embedding, image_attention_probs = self.v_layer[idx](
                image_embedding,
                image_attention_mask,
                txt_embedding,
                txt_attention_mask2,
            )

            if output_all_attention_masks:
                all_attnetion_mask_v.append(image_attention_probs)

        for idx in range(t_start, len(self.layer)):
            txt_embedding, txt_attention_probs = self.layer[idx](
                txt_embedding, txt_attention_mask
            )

            if output_all_attention_masks:
                all_attention_mask_t.append(txt_attention_probs)

        # add the end part to finish.
        if not output_all_encoded_layers:
            all_encoder_layers_t.append(txt_embedding)
            all_encoder_layers_v.append(image_embedding)

        return (
            all_encoder_layers_t,
            all_encoder_layers_v,
            (all_attention_mask_t, all_attnetion_mask_v, all_attention_mask_c),
        )


class BertTextPooler(nn.Module):
    def __init__(self, config):
        super(BertTextPooler, self).__init__()
        self.dense = nn.Linear(config.hidden_size, config.bi_hidden_size)
        self.activation = nn.ReLU()

    def forward(self, hidden_states):
        # We "pool" the model by simply taking the hidden state corresponding
        # to the first token.
        first_token_tensor = hidden_states[:, 0]
        pooled_output = self.dense(first_token_tensor)
        pooled_output = self.activation(pooled_output)
        return pooled_output


class BertImagePooler(nn.Module):
    def __init__(self, config):
        super(BertImagePooler, self).__init__()
        self.dense = nn.Linear(config.v_hidden_size, config.bi_hidden_size)
        self.activation = nn.ReLU()

    def forward(self, hidden_states):
        # We "pool" the model by simply taking the hidden state corresponding
        # to the first token.
        first_token_tensor = hidden_states[:, 0]
        pooled_output = self.dense(first_token_tensor)
        pooled_output = self.activation(pooled_output)
        return pooled_output


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super(BertPredictionHeadTransform, self).__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        if isinstance(config.hidden_act, str):
            self.transform_act_fn = ACT2FN[config.hidden_act]
        else:
            self.transform_act_fn = config.hidden_act
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=1e-12)

    def forward(self, hidden_states):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.transform_act_fn(hidden_states)
        hidden_states = self.LayerNorm(hidden_states)
        return hidden_states


class BertImgPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super(BertImgPredictionHeadTransform, self).__init__()
        self.dense = nn.Linear(config.v_hidden_size, config.v_hidden_size)
        if isinstance(config.hidden_act, str):
            self.transform_act_fn = ACT2FN[config.hidden_act]
        else:
            self.transform_act_fn = config.v_hidden_act
        self.LayerNorm = BertLayerNorm(config.v_hidden_size, eps=1e-12)

    def forward(self, hidden_states):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.transform_act_fn(hidden_states)
        hidden_states = self.LayerNorm(hidden_states)
        return hidden_states


class BertLMPredictionHead(nn.Module):
    def __init__(self, config, bert_model_embedding_weights):
        super(BertLMPredictionHead, self).__init__()
        self.transform = BertPredictionHeadTransform(config)

        # The output weights are the same as the input embeddings, but there is
        # an output-only bias for each token.
        self.decoder = nn.Linear(
            bert_model_embedding_weights.size(1),
            bert_model_embedding_weights.size(0),
            bias=False,
        )
        self.decoder.weight = bert_model_embedding_weights
        self.bias = nn.Parameter(torch.zeros(bert_model_embedding_weights.size(0)))

    def forward(self, hidden_states):
        hidden_states = self.transform(hidden_states)
        hidden_states = self.decoder(hidden_states) + self.bias
        return hidden_states


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config, bert_model_embedding_weights):
        super(BertPreTrainingHeads, self).__init__()
        self.predictions = BertLMPredictionHead(config, bert_model_embedding_weights)
        self.bi_seq_relationship = nn.Linear(config.bi_hidden_size, 2)
        self.imagePredictions = BertImagePredictionHead(config)
        self.fusion_method = config.fusion_method
        self.dropout = nn.Dropout(0.1)

    def forward(
        self, sequence_output_t, sequence_output_v, pooled_output_t, pooled_output_v
    ):

        if self.fusion_method == "sum":
            pooled_output = self.dropout(pooled_output_t + pooled_output_v)
        elif self.fusion_method == "mul":
            pooled_output = self.dropout(pooled_output_t * pooled_output_v)
        else:
            assert False

        prediction_scores_t = self.predictions(sequence_output_t)
        seq_relationship_score = self.bi_seq_relationship(pooled_output)
        prediction_scores_v = self.imagePredictions(sequence_output_v)

        return prediction_scores_t, prediction_scores_v, seq_relationship_score


class BertImagePredictionHead(nn.Module):
    def __init__(self, config):
        super(BertImagePredictionHead, self).__init__()
        self.transform = BertImgPredictionHeadTransform(config)

        # The output weights are the same as the input embeddings, but there is
        # an output-only bias for each token.
        self.decoder = nn.Linear(config.v_hidden_size, config.v_target_size)

    def forward(self, hidden_states):
        hidden_states = self.transform(hidden_states)
        hidden_states = self.decoder(hidden_states)
        return hidden_states


class BertImageEmbeddings(nn.Module):
    """Construct the embeddings from image, spatial location (omit now) and token_type embeddings.
    """

    def __init__(self, config):
        super(BertImageEmbeddings, self).__init__()

        self.image_embeddings = nn.Linear(config.v_feature_size, config.v_hidden_size)
        self.image_location_embeddings = nn.Linear(5, config.v_hidden_size)
        self.LayerNorm = BertLayerNorm(config.v_hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, input_loc):

        img_embeddings = self.image_embeddings(input_ids)
        loc_embeddings = self.image_location_embeddings(input_loc)

        # TODO: we want to make the padding_idx == 0, however, with custom initilization, it seems it will have a bias.
        # Let's do masking for now
        embeddings = self.LayerNorm(img_embeddings + loc_embeddings)
        # embeddings = self.LayerNorm(img_embeddings+loc_embeddings)
        embeddings = self.dropout(embeddings)

        return embeddings


class BertModel(nn.Module):
    def __init__(self, config):
        super(BertModel, self).__init__()

        # initilize word embedding
        if config.model == "bert":
            self.embeddings = BertEmbeddings(config)
        elif config.model == "roberta":
            self.embeddings = RobertaEmbeddings(config)

        self.task_specific_tokens = config.task_specific_tokens

        # initlize the vision embedding
        self.v_embeddings = BertImageEmbeddings(config)

        self.encoder = BertEncoder(config)
        self.t_pooler = BertTextPooler(config)
        self.v_pooler = BertImagePooler(config)


    def forward(
        self,
        input_txt,
        input_imgs,
        image_loc,
        token_type_ids=None,
        attention_mask=None,
        image_attention_mask=None,
        co_attention_mask=None,
        task_ids=None,
        output_all_encoded_layers=False,
        output_all_attention_masks=False,
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_txt)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_txt)
        if image_attention_mask is None:
            image_attention_mask = torch.ones(
                input_imgs.size(0), input_imgs.size(1)
            ).type_as(input_txt)

        if self.task_specific_tokens:
            # extend the mask
            mask_tokens = input_txt.new().resize_(input_txt.size(0), 1).fill_(1)
            attention_mask = torch.cat([mask_tokens, attention_mask], dim=1)

        # We create a 3D attention mask from a 2D tensor mask.
        # Sizes are [batch_size, 1, 1, to_seq_length]
        # So we can broadcast to [batch_size, num_heads, from_seq_length, to_seq_length]
        # this attention mask is more simple than the triangular masking of causal attention
        # used in OpenAI GPT, we just need to prepare the broadcast dimension here.
        extended_attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)
        extended_image_attention_mask = image_attention_mask.unsqueeze(1).unsqueeze(2)

        extended_attention_mask2 = attention_mask.unsqueeze(2)
        # Since attention_mask is 1.0 for positions we want to attend and 0.0 for
        # masked positions, this operation will create a tensor which is 0.0 for
        # positions we want to attend and -10000.0 for masked positions.
        # Since we are adding it to the raw scores before the softmax, this is
        # effectively the same as removing these entirely.
        extended_attention_mask = extended_attention_mask.to(
            dtype=next(self.parameters()).dtype
        )  # fp16 compatibility
        extended_attention_mask = (1.0 - extended_attention_mask) * -10000.0

        extended_attention_mask2 = extended_attention_mask2.to(
            dtype=next(self.parameters()).dtype
        )  # fp16 compatibility

        extended_image_attention_mask = extended_image_attention_mask.to(
            dtype=next(self.parameters()).dtype
        )  # fp16 compatibility
        extended_image_attention_mask = (1.0 - extended_image_attention_mask) * -10000.0

        if co_attention_mask is None:
            co_attention_mask = torch.zeros(
                input_txt.size(0), input_imgs.size(1), input_txt.size(1)
            ).type_as(extended_image_attention_mask)

        extended_co_attention_mask = co_attention_mask.unsqueeze(1)

        # extended_co_attention_mask = co_attention_mask.unsqueeze(-1)
        extended_co_attention_mask = extended_co_attention_mask * 5.0
        extended_co_attention_mask = extended_co_attention_mask.to(
            dtype=next(self.parameters()).dtype
        )  # fp16 compatibility

        embedding_output = self.embeddings(input_txt, token_type_ids, task_ids)
        v_embedding_output = self.v_embeddings(input_imgs, image_loc)
        encoded_layers_t, encoded_layers_v, all_attention_mask = self.encoder(
            embedding_output,
            v_embedding_output,
            extended_attention_mask,
            extended_attention_mask2,
            extended_image_attention_mask,
            extended_co_attention_mask,
            output_all_encoded_layers=output_all_encoded_layers,
            output_all_attention_masks=output_all_attention_masks,
        )

        sequence_output_t = encoded_layers_t[-1]
        sequence_output_v = encoded_layers_v[-1]

        pooled_output_t = self.t_pooler(sequence_output_t)
        pooled_output_v = self.v_pooler(sequence_output_v)

        if not output_all_encoded_layers:
            encoded_layers_t = encoded_layers_t[-1]
            encoded_layers_v = encoded_layers_v[-1]

        return (
            encoded_layers_t,
            encoded_layers_v,
            pooled_output_t,
            pooled_output_v,
            all_attention_mask,
        )


class SimpleClassifier(nn.Module):
    def __init__(self, in_dim, hid_dim, out_dim, dropout):
        super().__init__()
        self.logit_fc = nn.Sequential(
            nn.Linear(in_dim, hid_dim),
            GeLU(),
            BertLayerNorm(hid_dim, eps=1e-12),
            nn.Linear(hid_dim, out_dim),
        )

    def forward(self, hidden_states):
        return self.logit_fc(hidden_states)


# ==============================================================================================================
# METER, transcribed from zdou0830/METER meter/modules/bert_model.py (classes prefixed Meter) and heads.py
# ==============================================================================================================


class MeterBertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0 and not hasattr(config, "embedding_size"):
            raise ValueError(
                f"The hidden size ({config.hidden_size}) is not a multiple of the number of attention "
                f"heads ({config.num_attention_heads})"
            )

        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = int(config.hidden_size / config.num_attention_heads)
        self.all_head_size = self.num_attention_heads * self.attention_head_size

        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)

        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.position_embedding_type = getattr(config, "position_embedding_type", "absolute")
        if self.position_embedding_type == "relative_key" or self.position_embedding_type == "relative_key_query":
            self.max_position_embeddings = config.max_position_embeddings
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.attention_head_size)

        self.is_decoder = config.is_decoder

    def save_attn_gradients(self, attn_gradients):
        self.attn_gradients = attn_gradients
        
    def get_attn_gradients(self):
        return self.attn_gradients
    
    def save_attention_map(self, attention_map):
        self.attention_map = attention_map
        
    def get_attention_map(self):
        return self.attention_map
    


    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        x = x.view(*new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        head_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_value=None,
        output_attentions=False,
    ):
        mixed_query_layer = self.query(hidden_states)

        # If this is instantiated as a cross-attention module, the keys
        # and values come from an encoder; the attention mask needs to be
        # such that the encoder's padding tokens are not attended to.
        is_cross_attention = encoder_hidden_states is not None

        if is_cross_attention and past_key_value is not None:
            # reuse k,v, cross_attentions
            key_layer = past_key_value[0]
            value_layer = past_key_value[1]
            attention_mask = encoder_attention_mask
        elif is_cross_attention:
            key_layer = self.transpose_for_scores(self.key(encoder_hidden_states))
            value_layer = self.transpose_for_scores(self.value(encoder_hidden_states))
            attention_mask = encoder_attention_mask
        elif past_key_value is not None:
            key_layer = self.transpose_for_scores(self.key(hidden_states))
            value_layer = self.transpose_for_scores(self.value(hidden_states))
            key_layer = torch.cat([past_key_value[0], key_layer], dim=2)
            value_layer = torch.cat([past_key_value[1], value_layer], dim=2)
        else:
            key_layer = self.transpose_for_scores(self.key(hidden_states))
            value_layer = self.transpose_for_scores(self.value(hidden_states))

        query_layer = self.transpose_for_scores(mixed_query_layer)

        if self.is_decoder:
            # if cross_attention save Tuple(torch.Tensor, torch.Tensor) of all cross attention key/value_states.
            # Further calls to cross_attention layer can then reuse all cross-attention
            # key/value_states (first "if" case)
            # if uni-directional self-attention (decoder) save Tuple(torch.Tensor, torch.Tensor) of
            # all previous decoder key/value_states. Further calls to uni-directional self-attention
            # can concat previous decoder key/value_states to current projected key/value_states (third "elif" case)
            # if encoder bi-directional self-attention `past_key_value` is always `None`
            past_key_value = (key_layer, value_layer)

        # Take the dot product between "query" and "key" to get the raw attention scores.
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))

        if self.position_embedding_type == "relative_key" or self.position_embedding_type == "relative_key_query":
            seq_length = hidden_states.size()[1]
            position_ids_l = torch.arange(seq_length, dtype=torch.long, device=hidden_states.device).view(-1, 1)
            position_ids_r = torch.arange(seq_length, dtype=torch.long, device=hidden_states.device).view(1, -1)
            distance = position_ids_l - position_ids_r
            positional_embedding = self.distance_embedding(distance + self.max_position_embeddings - 1)
            positional_embedding = positional_embedding.to(dtype=query_layer.dtype)  # fp16 compatibility

            if self.position_embedding_type == "relative_key":
                relative_position_scores = torch.einsum("bhld,lrd->bhlr", query_layer, positional_embedding)
                attention_scores = attention_scores + relative_position_scores
            elif self.position_embedding_type == "relative_key_query":
                relative_position_scores_query = torch.einsum("bhld,lrd->bhlr", query_layer, positional_embedding)
                relative_position_scores_key = torch.einsum("bhrd,lrd->bhlr", key_layer, positional_embedding)
                attention_scores = attention_scores + relative_position_scores_query + relative_position_scores_key

        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        if attention_mask is not None:
            # Apply the attention mask is (precomputed for all layers in BertModel forward() function)
            attention_scores = attention_scores + attention_mask

        # Normalize the attention scores to probabilities.
        attention_probs = nn.Softmax(dim=-1)(attention_scores)

        #if True:
        if False:
            self.save_attention_map(attention_probs)
            attention_probs.register_hook(self.save_attn_gradients) 

        # This is actually dropping out entire tokens to attend to, which might
        # seem a bit unusual, but is taken from the original Transformer paper.
        attention_probs = self.dropout(attention_probs)

        # Mask heads if we want to
        if head_mask is not None:
            attention_probs = attention_probs * head_mask

        context_layer = torch.matmul(attention_probs, value_layer)

        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        context_layer = context_layer.view(*new_context_layer_shape)

        outputs = (context_layer, attention_probs) if output_attentions else (context_layer,)

        if self.is_decoder:
            outputs = outputs + (past_key_value,)
        return outputs


class MeterBertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class MeterBertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = MeterBertSelfAttention(config)
        self.output = MeterBertSelfOutput(config)
        self.pruned_heads = set()

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        head_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_value=None,
        output_attentions=False,
    ):
        self_outputs = self.self(
            hidden_states,
            attention_mask,
            head_mask,
            encoder_hidden_states,
            encoder_attention_mask,
            past_key_value,
            output_attentions,
        )
        attention_output = self.output(self_outputs[0], hidden_states)
        outputs = (attention_output,) + self_outputs[1:]  # add attentions if we output them
        return outputs


class MeterBertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        if isinstance(config.hidden_act, str):
            self.intermediate_act_fn = HF_ACT2FN[config.hidden_act]
        else:
            self.intermediate_act_fn = config.hidden_act

    def forward(self, hidden_states):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.intermediate_act_fn(hidden_states)
        return hidden_states


class MeterBertOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class MeterBertCrossLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.seq_len_dim = 1
        self.attention = MeterBertAttention(config)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        self.crossattention = MeterBertAttention(config)
        self.intermediate = MeterBertIntermediate(config)
        self.output = MeterBertOutput(config)

    def forward(
        self,
        hidden_states,
        encoder_hidden_states,
        attention_mask=None,
        encoder_attention_mask=None,
        output_attentions=False,
    ):
        # decoder uni-directional self-attention cached key/values tuple is at positions 1,2
        self_attn_past_key_value = None #past_key_value[:2] if past_key_value is not None else None
        self_attention_outputs = self.attention(
            hidden_states,
            attention_mask,
            head_mask=None,
            output_attentions=output_attentions,
            past_key_value=None,
        )
        attention_output = self_attention_outputs[0]

        # if decoder, the last output is tuple of self-attn cache
        outputs = self_attention_outputs[1:]  # add self attentions if we output attention weights

        cross_attn_present_key_value = None
        cross_attention_outputs = self.crossattention(
            attention_output,
            attention_mask,
            None,
            encoder_hidden_states,
            encoder_attention_mask,
            None,
            output_attentions,
        )
        attention_output = cross_attention_outputs[0]
        outputs = outputs + cross_attention_outputs[1:-1]  # add cross attentions if we output attention weights

        layer_output = apply_chunking_to_forward(
            self.feed_forward_chunk, self.chunk_size_feed_forward, self.seq_len_dim, attention_output
        )
        outputs = (layer_output,) + outputs

        return outputs

    def feed_forward_chunk(self, attention_output):
        intermediate_output = self.intermediate(attention_output)
        layer_output = self.output(intermediate_output, attention_output)
        return layer_output


class MeterPooler(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        first_token_tensor = hidden_states[:, 0]
        pooled_output = self.dense(first_token_tensor)
        pooled_output = self.activation(pooled_output)
        return pooled_output


class MeterITMHead(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 2)

    def forward(self, x):
        x = self.fc(x)
        return x


# ==============================================================================================================
# METER's fusion, as `METERTransformerSS.__init__` builds it and `infer` runs it from the unimodal outputs on
# ==============================================================================================================


class MeterFusion(nn.Module):
    """The modules `METERTransformerSS.__init__` builds after the towers, under their names there."""

    def __init__(self, config):
        super().__init__()
        bert_config = RobertaConfig(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_hidden_layers=config["num_layers"],
            num_attention_heads=config["num_heads"],
            intermediate_size=config["hidden_size"] * config["mlp_ratio"],
            max_position_embeddings=config["max_text_len"],
            hidden_dropout_prob=config["drop_rate"],
            attention_probs_dropout_prob=config["drop_rate"],
        )
        self.cross_modal_text_transform = nn.Linear(config['input_text_embed_size'], config['hidden_size'])
        self.cross_modal_image_transform = nn.Linear(config['input_image_embed_size'], config['hidden_size'])
        self.token_type_embeddings = nn.Embedding(2, config["hidden_size"])
        self.cross_modal_image_layers = nn.ModuleList([MeterBertCrossLayer(bert_config) for _ in range(config['num_top_layer'])])
        self.cross_modal_text_layers = nn.ModuleList([MeterBertCrossLayer(bert_config) for _ in range(config['num_top_layer'])])
        self.cross_modal_image_pooler = MeterPooler(config["hidden_size"])
        self.cross_modal_text_pooler = MeterPooler(config["hidden_size"])
        self.itm_score = MeterITMHead(config["hidden_size"]*2)
        hs = config["hidden_size"]
        vs = config["vqav2_label_size"]
        self.vqa_classifier = nn.Sequential(
            nn.Linear(hs * 2, hs * 2),
            nn.LayerNorm(hs * 2),
            nn.GELU(),
            nn.Linear(hs * 2, vs),
        )

    @staticmethod
    def get_extended_attention_mask(attention_mask, dtype):
        # transformers' `ModuleUtilsMixin.get_extended_attention_mask` for an encoder, which `infer` calls.
        extended = attention_mask[:, None, None, :].to(dtype)
        return (1.0 - extended) * torch.finfo(dtype).min

    def forward(self, text_embeds, text_masks, image_embeds, image_token_type_idx=1):
        # `METERTransformerSS.infer` from the text tower's output on (the towers are ours, on both sides).
        extend_text_masks = self.get_extended_attention_mask(text_masks, text_embeds.dtype)
        text_embeds = self.cross_modal_text_transform(text_embeds)

        image_embeds = self.cross_modal_image_transform(image_embeds)
        image_masks = torch.ones((image_embeds.size(0), image_embeds.size(1)), dtype=torch.long, device=image_embeds.device)
        extend_image_masks = self.get_extended_attention_mask(image_masks, image_embeds.dtype)

        text_embeds, image_embeds = (
            text_embeds + self.token_type_embeddings(torch.zeros_like(text_masks)),
            image_embeds
            + self.token_type_embeddings(
                torch.full_like(image_masks, image_token_type_idx)
            ),
        )

        x, y = text_embeds, image_embeds
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            x1 = text_layer(x, y, extend_text_masks, extend_image_masks)
            y1 = image_layer(y, x, extend_image_masks, extend_text_masks)
            x, y = x1[0], y1[0]

        text_feats, image_feats = x, y
        cls_feats_text = self.cross_modal_text_pooler(x)
        cls_feats_image = self.cross_modal_image_pooler(y)
        cls_feats = torch.cat([cls_feats_text, cls_feats_image], dim=-1)
        # `objectives.compute_vqa`: `vqa_logits = pl_module.vqa_classifier(infer["cls_feats"])`
        return text_feats, image_feats, cls_feats, self.itm_score(cls_feats), self.vqa_classifier(cls_feats)


# ==============================================================================================================
# Our weights into the transcribed modules
# ==============================================================================================================


def _copy(target: nn.Module, source: nn.Module) -> None:
    """A Linear, LayerNorm (ViLBERT's `BertLayerNorm` too) or Embedding's parameters, shapes checked."""
    for name in ("weight", "bias"):
        source_value = getattr(source, name, None)
        if source_value is None:
            assert getattr(target, name, None) is None, f"{type(target).__name__} has a {name}, ours has none"
            continue
        target_value = getattr(target, name)
        assert target_value.shape == source_value.shape, (name, tuple(target_value.shape), tuple(source_value.shape))
        target_value.data.copy_(source_value.data)


def _copy_attention(query, key, value, out, ours) -> None:
    for target, source in ((query, ours.q_proj), (key, ours.k_proj), (value, ours.v_proj), (out, ours.out_proj)):
        _copy(target, source)


def _copy_bert_layer(original, ours) -> None:
    """ViLBERT's `BertLayer` / `BertImageLayer` (self-attention + FFN, post-norm) <- our `VLPTransformerLayer`."""
    attention = original.attention
    _copy_attention(attention.self.query, attention.self.key, attention.self.value, attention.output.dense, ours.self_attn)
    _copy(attention.output.LayerNorm, ours.layer_norm1)
    _copy(original.intermediate.dense, ours.mlp.fc1)
    _copy(original.output.dense, ours.mlp.fc2)
    _copy(original.output.LayerNorm, ours.layer_norm2)


def _copy_connection_layer(original, ours) -> None:
    """`BertConnectionLayer` <- our `VLPCoAttentionLayer`'s `text_cross` / `image_cross` blocks. In `BertBiAttention`
    stream 1 is the image: `query1` is the image's queries, `key1` / `value1` the image keys the text queries read;
    `BertBiOutput.dense1` / `LayerNorm1` finish the image stream."""
    bi, out = original.biattention, original.biOutput
    text, image = ours.text_cross, ours.image_cross
    _copy(bi.query1, image.cross_attn.q_proj)
    _copy(bi.key2, image.cross_attn.k_proj)
    _copy(bi.value2, image.cross_attn.v_proj)
    _copy(out.dense1, image.cross_attn.out_proj)
    _copy(out.LayerNorm1, image.layer_norm_cross)
    _copy(bi.query2, text.cross_attn.q_proj)
    _copy(bi.key1, text.cross_attn.k_proj)
    _copy(bi.value1, text.cross_attn.v_proj)
    _copy(out.dense2, text.cross_attn.out_proj)
    _copy(out.LayerNorm2, text.layer_norm_cross)
    _copy(original.v_intermediate.dense, image.mlp.fc1)
    _copy(original.v_output.dense, image.mlp.fc2)
    _copy(original.v_output.LayerNorm, image.layer_norm2)
    _copy(original.t_intermediate.dense, text.mlp.fc1)
    _copy(original.t_output.dense, text.mlp.fc2)
    _copy(original.t_output.LayerNorm, text.layer_norm2)


def vilbert_original_config(config: VLPFusionConfig):
    """ViLBERT's `BertConfig` fields for our config: the text tower's layers then one text layer per fusion layer,
    co-attention after text layer `text_layers + k` and image layer k (`t_/v_biattention_id`)."""
    text, vision = config.text_config, config.vision_config
    text_layers, fusion_layers = text.num_hidden_layers, config.num_fusion_layers
    return type("BertConfig", (), dict(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, num_hidden_layers=text_layers + fusion_layers,
        num_attention_heads=text.num_attention_heads, intermediate_size=text.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=text.max_position_embeddings,
        type_vocab_size=text.type_vocab_size, initializer_range=0.02, v_feature_size=config.visual_feat_dim,
        v_target_size=config.num_object_labels, v_hidden_size=vision.hidden_size, v_num_hidden_layers=fusion_layers,
        v_num_attention_heads=vision.num_attention_heads, v_intermediate_size=vision.intermediate_size,
        bi_hidden_size=config.co_attention_hidden_size, bi_num_attention_heads=config.co_attention_num_heads,
        v_attention_probs_dropout_prob=0.1, v_hidden_act="gelu", v_hidden_dropout_prob=0.1,
        v_biattention_id=list(range(fusion_layers)), t_biattention_id=list(range(text_layers, text_layers + fusion_layers)),
        visual_target=0, fast_mode=False, fixed_v_layer=0, fixed_t_layer=0, in_batch_pairs=False, fusion_method="mul",
        dynamic_attention=False, with_coattention=True, objective=0, model="bert", task_specific_tokens=False,
        visualization=False,
    ))  # fmt: skip


def load_vilbert(ours: VLPFusionForPreTraining):
    """ViLBERT's `BertModel`, `BertPreTrainingHeads` and VQA `SimpleClassifier` holding our model's weights."""
    config = vilbert_original_config(ours.config)
    bert = BertModel(config)
    heads = BertPreTrainingHeads(config, bert.embeddings.word_embeddings.weight)
    vqa = SimpleClassifier(config.bi_hidden_size, config.bi_hidden_size * 2, ours.config.num_labels, 0.5)
    vlp = ours.vlp
    embeddings = bert.embeddings
    _copy(embeddings.word_embeddings, vlp.text_embeddings.token_embedding)
    _copy(embeddings.position_embeddings, vlp.text_embeddings.position_embedding)
    _copy(embeddings.token_type_embeddings, vlp.text_embeddings.token_type_embedding)
    _copy(embeddings.LayerNorm, vlp.text_embeddings.layer_norm)
    _copy(bert.v_embeddings.image_embeddings, vlp.image_embeddings.feat_proj)
    _copy(bert.v_embeddings.image_location_embeddings, vlp.image_embeddings.box_proj)
    _copy(bert.v_embeddings.LayerNorm, vlp.image_embeddings.layer_norm)
    text_layers = list(vlp.text_encoder.layers) + [layer.text_layer for layer in vlp.fusion.layers]
    assert len(text_layers) == len(bert.encoder.layer)
    for original, layer in zip(bert.encoder.layer, text_layers):
        _copy_bert_layer(original, layer)
    for original, layer in zip(bert.encoder.v_layer, vlp.fusion.layers):
        _copy_bert_layer(original, layer.image_layer)
    for original, layer in zip(bert.encoder.c_layer, vlp.fusion.layers):
        _copy_connection_layer(original, layer)
    _copy(bert.t_pooler.dense, vlp.pooler.text_dense)
    _copy(bert.v_pooler.dense, vlp.pooler.image_dense)
    _copy(heads.bi_seq_relationship, ours.itm_head)
    transform = heads.predictions.transform
    _copy(transform.dense, ours.mlm_head.transform.dense)
    _copy(transform.LayerNorm, ours.mlm_head.transform.layer_norm)
    heads.predictions.bias.data.copy_(ours.mlm_head.decoder.bias.data)  # the decoder's weight is tied to the words
    image_head = heads.imagePredictions
    _copy(image_head.transform.dense, ours.region_head.transform.dense)
    _copy(image_head.transform.LayerNorm, ours.region_head.transform.layer_norm)
    _copy(image_head.decoder, ours.region_head.decoders["obj"])
    answer = ours.answer_head
    for index, source in ((0, answer.dense), (2, answer.layer_norm), (3, answer.classifier)):
        _copy(vqa.logit_fc[index], source)
    return bert.eval(), heads.eval(), vqa.eval()


def meter_original_config(config: VLPFusionConfig) -> dict:
    text = config.text_config
    return dict(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, num_layers=text.num_hidden_layers,
        num_heads=text.num_attention_heads, mlp_ratio=text.intermediate_size // text.hidden_size,
        max_text_len=text.max_position_embeddings, drop_rate=0.1, input_text_embed_size=text.hidden_size,
        input_image_embed_size=config.vision_config.hidden_size, num_top_layer=config.num_fusion_layers,
        vqav2_label_size=config.num_labels,
    )  # fmt: skip


def _copy_cross_layer(original, ours) -> None:
    """METER's `BertCrossLayer` (self-attention, cross-attention, FFN, post-norm) <- our `VLPTransformerLayer`."""
    for attention, source, norm in (
        (original.attention, ours.self_attn, ours.layer_norm1),
        (original.crossattention, ours.cross_attn, ours.layer_norm_cross),
    ):
        _copy_attention(attention.self.query, attention.self.key, attention.self.value, attention.output.dense, source)
        _copy(attention.output.LayerNorm, norm)
    _copy(original.intermediate.dense, ours.mlp.fc1)
    _copy(original.output.dense, ours.mlp.fc2)
    _copy(original.output.LayerNorm, ours.layer_norm2)


def load_meter(ours: VLPFusionForPreTraining) -> MeterFusion:
    meter = MeterFusion(meter_original_config(ours.config))
    fusion = ours.vlp.fusion
    _copy(meter.cross_modal_text_transform, fusion.text_transform)
    _copy(meter.cross_modal_image_transform, fusion.image_transform)
    _copy(meter.token_type_embeddings, fusion.token_type_embeddings)
    for text_layer, image_layer, layer in zip(meter.cross_modal_text_layers, meter.cross_modal_image_layers, fusion.layers):
        _copy_cross_layer(text_layer, layer.text_layer)
        _copy_cross_layer(image_layer, layer.image_layer)
    _copy(meter.cross_modal_text_pooler.dense, ours.vlp.pooler.text_dense)
    _copy(meter.cross_modal_image_pooler.dense, ours.vlp.pooler.image_dense)
    _copy(meter.itm_score.fc, ours.itm_head)
    answer = ours.answer_head
    for index, source in ((0, answer.dense), (1, answer.layer_norm), (3, answer.classifier)):
        _copy(meter.vqa_classifier[index], source)
    return meter.eval()


# ==============================================================================================================
# The presets at tiny sizes, and inputs
# ==============================================================================================================

BATCH, TEXT_LENGTH, NUM_REGIONS, FEAT_DIM = 3, 7, 5, 24
_TINY_TEXT = dict(
    vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
)  # fmt: skip


def vilbert_tiny(**overrides) -> VLPFusionForPreTraining:
    """vilbert-base with tiny widths: everything else (layer order, pooling, embeddings) is the preset's."""
    config = get_preset_config(
        "vilbert-base",
        text_config=dict(_TINY_TEXT), vision_config=dict(hidden_size=48, intermediate_size=40, num_attention_heads=4),
        visual_feat_dim=FEAT_DIM, num_fusion_layers=2, co_attention_hidden_size=40, co_attention_num_heads=5,
        num_object_labels=11, num_labels=7, pretraining_answer_head=True, **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    model = VLPFusionForPreTraining(config).eval()
    with torch.no_grad():  # LayerNorms and biases away from their init, so that a swapped pair shows
        for name, parameter in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def meter_tiny(**overrides) -> VLPFusionForPreTraining:
    config = get_preset_config(
        "meter-base",
        text_config=dict(_TINY_TEXT, intermediate_size=128, pad_token_id=1, bos_token_id=0, eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        num_fusion_layers=2, num_labels=7, pretraining_answer_head=True, answer_head_size=64, **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    model = VLPFusionForPreTraining(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias") or "token_type" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def text_inputs(generator):
    input_ids = torch.randint(3, 99, (BATCH, TEXT_LENGTH), generator=generator)
    attention_mask = torch.ones(BATCH, TEXT_LENGTH, dtype=torch.long)
    attention_mask[1, 4:] = 0  # padding in one row
    return input_ids, attention_mask


def region_inputs(generator):
    feats = torch.randn(BATCH, NUM_REGIONS, FEAT_DIM, generator=generator)
    corner = 0.5 * torch.rand(BATCH, NUM_REGIONS, 2, generator=generator)
    size = 0.5 * torch.rand(BATCH, NUM_REGIONS, 2, generator=generator)
    area = size[..., :1] * size[..., 1:]
    boxes = torch.cat([corner, corner + size, area], dim=-1)  # ViLBERT's (x1, y1, x2, y2, area), normalised
    region_mask = torch.ones(BATCH, NUM_REGIONS, dtype=torch.long)
    region_mask[2, 3:] = 0
    return feats, boxes, region_mask


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a - b).abs().max())


# ==============================================================================================================
# Parity
# ==============================================================================================================


def test_vilbert_preset_matches_the_transcribed_original_model():
    """Embeddings, 2 text layers, 2 of ViLBERT's fusion layers (co-attention block + plain layer per stream), the
    product pooler, ITM, MLM, region and VQA heads: ours against `BertModel` + `BertPreTrainingHeads` +
    `SimpleClassifier`, with padded text and padded regions."""
    ours = vilbert_tiny()
    bert, heads, vqa = load_vilbert(ours)
    generator = torch.Generator().manual_seed(1)
    input_ids, attention_mask = text_inputs(generator)
    feats, boxes, region_mask = region_inputs(generator)
    token_type_ids = torch.zeros_like(input_ids)
    with torch.no_grad():
        out = ours(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, visual_feats=feats,
            visual_pos=boxes, visual_attention_mask=region_mask,
        )  # fmt: skip
        text, image, pooled_t, pooled_v, _ = bert(
            input_ids, feats, boxes, token_type_ids, attention_mask, region_mask
        )
        mlm, region, itm = heads(text, image, pooled_t, pooled_v)
        answers = vqa(pooled_t * pooled_v)
    fused = out.fusion_output
    diffs = {
        "text stream": _max_diff(fused.text_last_hidden_state, text),
        "image stream": _max_diff(fused.image_last_hidden_state, image),
        "pooled": _max_diff(fused.pooler_output, pooled_t * pooled_v),
        "itm": _max_diff(out.itm_logits, itm),
        "mlm": _max_diff(out.mlm_logits, mlm),
        "region classes": _max_diff(out.obj_logits, region),
        "vqa": _max_diff(out.answer_logits, answers),
    }
    print("ViLBERT max abs diffs:", diffs)
    assert max(diffs.values()) < TOLERANCE, diffs
    # Not trivially equal: the streams moved away from their embeddings and the two padded rows differ.
    assert float(text.abs().mean()) > 0.1 and float(itm.std()) > 0


def test_vilbert_fusion_layer_order_matters():
    """The same weights in METER's / LXMERT's orders no longer match the original: the parity above is about the
    order, not about an insensitive comparison."""
    reference = vilbert_tiny()
    bert, _, _ = load_vilbert(reference)
    generator = torch.Generator().manual_seed(1)
    input_ids, attention_mask = text_inputs(generator)
    feats, boxes, region_mask = region_inputs(generator)
    with torch.no_grad():
        text, _, _, _, _ = bert(input_ids, feats, boxes, torch.zeros_like(input_ids), attention_mask, region_mask)
        ours = reference(
            input_ids=input_ids, attention_mask=attention_mask, visual_feats=feats, visual_pos=boxes,
            visual_attention_mask=region_mask,
        ).fusion_output.text_last_hidden_state  # fmt: skip
        # Dropping the plain layers of the fusion (their residual paths added nothing) changes the output.
        for layer in reference.vlp.fusion.layers:
            layer.text_layer.forward = lambda states, mask, *args, **kwargs: (states, None, None)
        without = reference(
            input_ids=input_ids, attention_mask=attention_mask, visual_feats=feats, visual_pos=boxes,
            visual_attention_mask=region_mask,
        ).fusion_output.text_last_hidden_state  # fmt: skip
    assert _max_diff(ours, text) < TOLERANCE
    assert _max_diff(without, text) > 1e-2


def test_meter_preset_matches_the_transcribed_original_fusion():
    """METER's input maps, token types, 2 `BertCrossLayer`s per stream (BERT-configured: gelu, eps 1e-12, where the
    image tower is CLIP's quick_gelu, 1e-5), the concatenated poolers, ITM and the VQA classifier, from our unimodal
    outputs on."""
    ours = meter_tiny()
    meter = load_meter(ours)
    generator = torch.Generator().manual_seed(2)
    input_ids, attention_mask = text_inputs(generator)
    pixel_values = torch.randn(BATCH, 3, 32, 32, generator=generator)
    with torch.no_grad():
        out = ours(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        fused = out.fusion_output
        text, image, cls_feats, itm, vqa = meter(
            fused.text_unimodal_state, attention_mask, fused.image_unimodal_state
        )
    diffs = {
        "text stream": _max_diff(fused.text_last_hidden_state, text),
        "image stream": _max_diff(fused.image_last_hidden_state, image),
        "cls_feats": _max_diff(fused.pooler_output, cls_feats),
        "itm": _max_diff(out.itm_logits, itm),
        "vqa": _max_diff(out.answer_logits, vqa),
    }
    print("METER max abs diffs:", diffs)
    assert max(diffs.values()) < TOLERANCE, diffs
    assert ours.vlp.fusion.layers[0].image_layer.layer_norm1.eps == 1e-12
    assert ours.config.vision_config.hidden_act == "quick_gelu"  # the tower keeps CLIP's


def test_meter_fusion_layers_with_the_towers_activation_do_not_match():
    """METER builds both streams' cross layers from one BERT config; with the image tower's own quick_gelu and eps
    1e-5 (what meter-base had before `fusion_hidden_act` / `fusion_layer_norm_eps`) the same weights differ."""
    ours = meter_tiny(fusion_hidden_act=None, fusion_layer_norm_eps=None)
    meter = load_meter(ours)
    generator = torch.Generator().manual_seed(2)
    input_ids, attention_mask = text_inputs(generator)
    pixel_values = torch.randn(BATCH, 3, 32, 32, generator=generator)
    with torch.no_grad():
        fused = ours(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).fusion_output
        _, image, _, _, _ = meter(fused.text_unimodal_state, attention_mask, fused.image_unimodal_state)
    assert _max_diff(fused.image_last_hidden_state, image) > 5 * TOLERANCE  # the parity test would fail


# ==============================================================================================================
# The new options in the rest of the model
# ==============================================================================================================


@pytest.mark.parametrize("build", [vilbert_tiny, meter_tiny], ids=["vilbert", "meter"])
def test_save_load_fuse_and_gradient_checkpointing(build, tmp_path):
    """Round trip, `fuse` on other pairings (hard negatives, re-ranking) equal to the paired forward, and gradient
    checkpointing giving the same gradients."""
    model = build()
    generator = torch.Generator().manual_seed(3)
    input_ids, attention_mask = text_inputs(generator)
    if model.config.visual_input == "regions":
        feats, boxes, region_mask = region_inputs(generator)
        image_inputs = dict(visual_feats=feats, visual_pos=boxes, visual_attention_mask=region_mask)
    else:
        image_inputs = dict(pixel_values=torch.randn(BATCH, 3, 32, 32, generator=generator))
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, **image_inputs)
    with torch.no_grad():
        expected = model(**inputs)
    model.save_pretrained(tmp_path)
    loaded = VLPFusionForPreTraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert _max_diff(loaded(**inputs).itm_logits, expected.itm_logits) == 0.0
        fused = expected.fusion_output
        order = torch.tensor([2, 0, 1])
        itm = model.itm_logits_for_pairs(
            fused.text_unimodal_state, attention_mask, fused.image_unimodal_state[order],
            fused.image_attention_mask[order],
        )  # fmt: skip
        paired = model(
            input_ids=input_ids[order.argsort()], attention_mask=attention_mask[order.argsort()], **image_inputs
        ).itm_logits  # text order.argsort()[j] with image j
    assert _max_diff(itm[order.argsort()], paired) < 1e-5

    model.train()
    for module in model.modules():  # no dropout (nn.Dropout, and the attention's probability), so that both runs agree
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model.gradient_checkpointing_enable()
        model(**inputs).itm_logits.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert _max_diff(grads[0], grads[1]) < 1e-5


def test_new_options_default_to_the_old_architecture():
    """Defaults keep LXMERT's / ALBEF's modules and state-dict keys: no new parameter appears."""
    for name in ("lxmert-base", "albef-base", "fusion-tiny"):
        config = get_preset_config(name)
        assert (config.co_attention_hidden_size, config.co_attention_num_heads) == (None, None)
        assert not (config.cross_modal_transform or config.fusion_token_type_embeddings)
        assert config.region_embedding_norm == "each" and config.fused_pooled_size == config.text_config.hidden_size
        assert (config.fusion_dropout, config.answer_head_size, config.answer_head_norm_first) == (None, None, False)
    model = VLPFusionForPreTraining(get_preset_config("fusion-tiny"))
    keys = set(model.state_dict())
    new_modules = ("text_cross", "image_cross", "fusion.text_transform", "fusion.token_type_embeddings", "text_dense")
    assert not any(part in key for key in keys for part in new_modules)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(fusion_type="merge", fused_pooling="text_image_concat"),
         "`fused_pooling='text_image_concat'`: options of the co-attention .* need `fusion_type='co_attention'`"),
        (dict(fusion_type="merge", fusion_layer_norm_eps=1e-12), "ValueError: `fusion_layer_norm_eps`: options"),
        (dict(fusion_type="co_attention", co_attention_order="self_first", co_attention_num_heads=2),
         "`co_attention_num_heads` is read by"),
        (dict(fusion_type="co_attention", co_attention_order="cross_ffn_first", co_attention_hidden_size=30,
              co_attention_num_heads=4), "multiple of its 4 heads"),
        (dict(fusion_type="co_attention", co_attention_order="cross_ffn_first", share_cross_attention=True),
         "no sharing"),
        (dict(fusion_type="co_attention", fusion_token_type_embeddings=True, vision_config={"hidden_size": 48}),
         "equal text and vision widths"),
        (dict(region_embedding_norm="both"), "region_embedding_norm"),
        (dict(fusion_type="merge", fusion_dropout=0.1), "`fusion_dropout`: options"),
        (dict(answer_head_size=0), "answer_head_size"),
    ],
)  # fmt: skip
def test_bad_option_combinations_are_refused(overrides, message):
    with pytest.raises(Exception, match=message):  # the config's validator error, wrapping our ValueError
        get_preset_config("fusion-tiny", **overrides)
