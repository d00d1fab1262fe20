        %{{tag}}_s{{d}} = arith.constant {{out_stride}} : index
        %{{tag}}_q{{d}} = arith.divui {{idx}}, %{{tag}}_s{{d}} : index
        %{{tag}}_n{{d}} = arith.constant {{extent}} : index
        %{{tag}}_c{{d}} = arith.remui %{{tag}}_q{{d}}, %{{tag}}_n{{d}} : index
        %{{tag}}_w{{d}} = arith.constant {{stride}} : index
        %{{tag}}_t{{d}} = arith.muli %{{tag}}_c{{d}}, %{{tag}}_w{{d}} : index
        %{{tag}}_a{{d}} = arith.addi {{acc}}, %{{tag}}_t{{d}} : index
