        %cq{{q}} = arith.constant {{row}} : index
        %crow{{q}} = arith.addi %crow, %cq{{q}} : index
{{weight_word}}
        %wq{{q}} = arith.addi %wtx, %q{{q}}_bwc : index
        %sqr{{q}} = arith.muli %crow{{q}}, %c128 : index
        %sq{{q}} = arith.addi %sqr{{q}}, %cposb : index
