              %tr{{i}}o = arith.constant {{rows}} : index
              %tr{{i}} = arith.addi %trow, %tr{{i}}o : index
              %tr{{i}}32 = arith.index_cast %tr{{i}} : index to i32
              %td{{i}}o = arith.constant {{bytes}} : index
              %td{{i}} = arith.addi %psb, %td{{i}}o : index
              %td{{i}}32 = arith.index_cast %td{{i}} : index to i32
{{copy}}
